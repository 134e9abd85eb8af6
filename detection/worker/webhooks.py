"""Incident webhooks: a JSON POST when an incident opens or closes, never blocking scoring.

Deliveries run on a background thread with a timeout and a few retries with backoff; a
receiver that is down costs a log line, not a stalled worker.

Where a webhook may go is the trust model of docs/security.md ("Outbound requests"):
http/https only; public addresses, plus the networks DETECTION_WEBHOOK_ALLOWED_NETWORKS
opens; never link-local or cloud metadata. Each attempt resolves the host, checks every
address and connects to a checked one (Host header and TLS name stay the host name), so a
DNS answer that changes in between cannot redirect the POST. Redirects are not followed.
Credentials in the URL are sent as HTTP Basic and never logged (`redact`).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings

from detection.engine import netpolicy
from detection.engine.netpolicy import (
    WEBHOOK_SCHEMES,
    AddressError,
    IPAddress,
    NetworkPolicy,
    Target,
    UnresolvableHost,
    redact,
)
from detection.engine.outbound import pinned_connection

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
RETRIES = 3
BACKOFF_S = 1.0

# One delivery thread: events reach a receiver in the order they happened (an incident's
# "closed" never overtakes its "opened"); a receiver that is down delays only webhooks.
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook")


def webhook_policy() -> NetworkPolicy:
    """Where webhooks may go, with the networks the settings open (read per call)."""
    return netpolicy.webhook_policy(settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS)


def check_url(
    url: str, policy: NetworkPolicy | None = None
) -> tuple[Target, tuple[IPAddress, ...]]:
    """The parsed URL and its checked addresses; `AddressError` says why not."""
    target = netpolicy.parse_url(url, WEBHOOK_SCHEMES, "webhook URL")
    return target, (policy or webhook_policy()).check(target)


def deliver(
    url: str,
    event: dict[str, Any],
    *,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    policy: NetworkPolicy | None = None,
) -> bool:
    """POST `event` as JSON; True when the receiver answered 2xx. Runs in the caller."""
    shown = redact(url)
    body = json.dumps(event).encode()
    for attempt in range(1, retries + 1):
        try:
            # Checked on every attempt: the address is what this attempt connects to.
            target, addresses = check_url(url, policy)
            status, location = _post(target, addresses, body)
        except UnresolvableHost as exc:  # DNS may come back: retried
            reason = str(exc)
        except AddressError as exc:  # a refused address or a bad URL: retrying cannot help
            log.warning("webhook %s refused: %s", shown, exc)
            return False
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
        else:
            if 200 <= status < 300:
                return True
            if 300 <= status < 400:
                # Following it would reach a target nobody checked: a failed delivery.
                log.warning(
                    "webhook %s answered HTTP %d, a redirect to %s: not followed, not delivered",
                    shown,
                    status,
                    redact(location) if location else "(no Location)",
                )
                return False
            reason = f"HTTP {status}"
        log.warning("webhook %s attempt %d/%d failed: %s", shown, attempt, retries, reason)
        if attempt < retries:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return False


def send(url: str, event: dict[str, Any]) -> None:
    """Queue a delivery and return at once."""
    if url:
        _pool.submit(deliver, url, event)


# --- the connection -----------------------------------------------------------------------


def _post(target: Target, addresses: tuple[IPAddress, ...], body: bytes) -> tuple[int, str]:
    """POST `body` to `target` over a connection to one of `addresses`; (status, Location)."""
    headers = {"Content-Type": "application/json", "User-Agent": "clipwatch-webhook"}
    if target.username is not None:
        secret = f"{target.username}:{target.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(secret).decode("ascii")
    # Connected to the checked addresses, not a new lookup; `host` stays the name (the
    # Host header, SNI and the certificate check are about the name the operator wrote).
    connection = pinned_connection(target, addresses, timeout=TIMEOUT_S)
    try:
        connection.request("POST", target.request_target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Location") or ""
    finally:
        connection.close()
