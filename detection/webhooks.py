"""Incident webhooks: a JSON POST when an incident opens or closes, never blocking scoring.

Deliveries run on a background thread with a timeout and a few retries with backoff; a
receiver that is down costs a log line, not a stalled worker.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
RETRIES = 3
BACKOFF_S = 1.0

# One delivery thread: events reach a receiver in the order they happened (an incident's
# "closed" never overtakes its "opened"); a receiver that is down delays only webhooks.
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook")


def deliver(
    url: str, event: dict[str, Any], *, retries: int = RETRIES, backoff_s: float = BACKOFF_S
) -> bool:
    """POST `event` as JSON; True when the receiver answered 2xx. Runs in the caller."""
    body = json.dumps(event).encode()
    for attempt in range(1, retries + 1):
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "clipwatch-webhook"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                if 200 <= response.status < 300:
                    return True
                reason = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        log.warning("webhook %s attempt %d/%d failed: %s", url, attempt, retries, reason)
        if attempt < retries:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return False


def send(url: str, event: dict[str, Any]) -> None:
    """Queue a delivery and return at once."""
    if url:
        _pool.submit(deliver, url, event)
