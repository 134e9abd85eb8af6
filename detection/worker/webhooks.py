"""Incident webhooks: signed JSON POSTs, logged and retried, never blocking scoring.

Each event becomes a `WebhookDelivery` row (the log) when it happens; the POST itself runs
on a background thread with a short timeout, and its outcome goes back to the worker's own
thread (`step`), which records it and schedules the next attempt: connection errors, 5xx
and 429 are retried with exponential backoff (by default 5 attempts over 15 minutes), other
answers are final. Only the worker's thread touches the database; a worker that restarts
picks up what was still due from the log.

Every POST is signed (docs/deployment.md, "Webhooks" has a receiver's check in Python):

    X-Clipwatch-Timestamp: <unix seconds of this attempt>
    X-Clipwatch-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>

The secret is per analysis (`Analysis.webhook_secret`, generated when a URL is set, shown
once in the admin). A receiver that rejects old timestamps is safe from replays; one that
remembers `X-Clipwatch-Delivery` is safe from the rare duplicate (a retry after a lost
answer).

Where a webhook may go is the trust model of docs/security.md ("Outbound requests"):
http/https only; public addresses, plus the networks DETECTION_WEBHOOK_ALLOWED_NETWORKS
opens; never link-local or cloud metadata. Each attempt resolves the host, checks every
address and connects to a checked one (Host header and TLS name stay the host name), so a
DNS answer that changes in between cannot redirect the POST. Redirects are not followed.
Credentials in the URL are sent as HTTP Basic and never logged or stored (`redact`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import queue
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

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
from detection.models import Analysis, Incident, WebhookDelivery

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
RETRIES = 3  # deliver(): attempts in one call
BACKOFF_S = 1.0
# An attempt under way holds its row this long (next_attempt_at pushed ahead): another
# worker leaves it alone meanwhile, and a worker that died with it retries after this.
CLAIM_S = 120.0
# How often the worker looks for deliveries that are due.
SCAN_S = 5.0
MAX_ERROR_CHARS = 500

SIGNATURE_HEADER = "X-Clipwatch-Signature"
TIMESTAMP_HEADER = "X-Clipwatch-Timestamp"
DELIVERY_HEADER = "X-Clipwatch-Delivery"
EVENT_HEADER = "X-Clipwatch-Event"

Status = WebhookDelivery.Status

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


# --- signing ------------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(
    secret: str, body: bytes, *, event: str = "", delivery: int | None = None
) -> dict[str, str]:
    """The headers of one attempt: a fresh timestamp, and its signature when there is a
    secret."""
    timestamp = int(time.time())
    headers = {TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    if event:
        headers[EVENT_HEADER] = event
    if delivery is not None:
        headers[DELIVERY_HEADER] = str(delivery)
    return headers


def ensure_secret(analysis_id: int) -> tuple[str, str]:
    """The analysis's (webhook URL, secret), generating the secret should a URL have none
    (an analysis made outside the admin). Read from the database: the admin may have
    changed either since the worker loaded the analysis."""
    url, secret = Analysis.objects.filter(pk=analysis_id).values_list(
        "webhook_url", "webhook_secret"
    ).first() or ("", "")
    if url and not secret:
        # Compare-and-set: a secret the admin set meanwhile wins.
        Analysis.objects.filter(pk=analysis_id, webhook_secret="").update(
            webhook_secret=new_secret()
        )
        secret = Analysis.objects.values_list("webhook_secret", flat=True).get(pk=analysis_id)
        log.info(
            "analysis %s: generated a webhook secret (regenerate it in the admin to see it)",
            analysis_id,
        )
    return url, secret


# --- one attempt --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool  # worth another attempt later
    status: int | None  # the receiver's HTTP status, when it answered
    reason: str  # why not delivered; names the URL only redacted
    deferred: bool = False  # not attempted: an earlier event of the analysis waits for a retry


def attempt(
    url: str, body: bytes, headers: dict[str, str], policy: NetworkPolicy | None = None
) -> Outcome:
    """One POST of `body`; what came of it. Never raises for network trouble."""
    try:
        # Checked on every attempt: the address is what this attempt connects to.
        target, addresses = check_url(url, policy)
        status, location = _post(target, addresses, body, headers)
    except UnresolvableHost as exc:  # DNS may come back: retried
        return Outcome(False, True, None, str(exc))
    except AddressError as exc:  # a refused address or a bad URL: retrying cannot help
        return Outcome(False, False, None, f"refused: {exc}")
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(False, True, None, str(exc) or type(exc).__name__)
    if 200 <= status < 300:
        return Outcome(True, False, status, "")
    if 300 <= status < 400:
        # Following it would reach a target nobody checked: a failed delivery.
        shown = redact(location) if location else "(no Location)"
        return Outcome(False, False, status, f"HTTP {status}, a redirect to {shown}: not followed")
    # The receiver is overloaded or broken for now; any other 4xx is its final answer.
    retry = status == 429 or status >= 500
    return Outcome(False, retry, status, f"HTTP {status}")


def deliver(
    url: str,
    event: dict[str, Any],
    *,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    policy: NetworkPolicy | None = None,
    secret: str = "",
) -> bool:
    """POST `event` as JSON, retrying in this thread; True when the receiver answered 2xx.

    The worker's deliveries go through the log instead (`enqueue`, `step`); this is the
    same attempt without one (a last resort when the database is away)."""
    shown = redact(url)
    body = json.dumps(event).encode()
    for number in range(1, retries + 1):
        outcome = attempt(url, body, signed_headers(secret, body), policy)
        if outcome.delivered:
            return True
        if not outcome.retry:
            log.warning("webhook %s not delivered: %s", shown, outcome.reason)
            return False
        log.warning("webhook %s attempt %d/%d failed: %s", shown, number, retries, outcome.reason)
        if number < retries:
            time.sleep(backoff_s * 2 ** (number - 1))
    return False


# --- the log: events, attempts, retries -----------------------------------------------------


def attempts_allowed() -> int:
    return settings.DETECTION_WEBHOOK_ATTEMPTS


def retry_delay(attempts_made: int) -> timedelta:
    """The wait after the `attempts_made`-th failed attempt: first, 2x, 4x, 8x, ..."""
    first = settings.DETECTION_WEBHOOK_RETRY_SECONDS
    return timedelta(seconds=first * 2 ** (attempts_made - 1))


class _Dispatcher:
    """Attempts in flight in this process, and their outcomes waiting to be recorded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: set[int] = set()
        self.outcomes: queue.SimpleQueue[tuple[int, Outcome, datetime]] = queue.SimpleQueue()
        self.next_scan = 0.0
        # analysis -> its earliest event whose attempt failed and waits for a retry: later
        # events of that analysis already queued here wait behind it (order per analysis).
        self.blocked: dict[int, int] = {}

    def submit(self, delivery: WebhookDelivery, url: str, secret: str) -> None:
        body = json.dumps(delivery.payload).encode()
        with self.lock:
            self.in_flight.add(delivery.pk)
        _pool.submit(
            self._run, delivery.pk, delivery.analysis_id, delivery.event, url, secret, body
        )

    def unblock(self, analysis_id: int, pk: int) -> None:
        with self.lock:
            if self.blocked.get(analysis_id) == pk:
                del self.blocked[analysis_id]

    def _run(
        self, pk: int, analysis_id: int, event: str, url: str, secret: str, body: bytes
    ) -> None:
        # No database here: the worker's thread records the outcome (`step`).
        with self.lock:
            earlier = self.blocked.get(analysis_id)
        if earlier is not None and earlier < pk:
            self.outcomes.put((pk, Outcome(False, True, None, "", deferred=True), timezone.now()))
            return
        try:
            headers = signed_headers(secret, body, event=event, delivery=pk)
            outcome = attempt(url, body, headers)
        except Exception as exc:  # a bug must not lose the row's bookkeeping
            log.exception("webhook delivery %s: unexpected error", pk)
            outcome = Outcome(False, True, None, type(exc).__name__)
        if outcome.retry:
            with self.lock:
                self.blocked[analysis_id] = min(pk, self.blocked.get(analysis_id, pk))
        if not outcome.delivered:
            log.warning(
                "webhook %s (delivery %s, %s) failed: %s", redact(url), pk, event, outcome.reason
            )
        self.outcomes.put((pk, outcome, timezone.now()))

    def busy(self) -> bool:
        with self.lock:
            return bool(self.in_flight)


_dispatcher = _Dispatcher()


def enqueue(analysis: Analysis, incident: Incident | None, event: dict[str, Any]) -> None:
    """Log `event` for the analysis's webhook and start its first attempt (if it is next).

    Called by the worker after the store transaction committed; never raises for a
    database that is away (the event is then sent once, unlogged)."""
    try:
        url, secret = ensure_secret(analysis.pk)
        if not url:
            return
        # Order per analysis: while an earlier event waits for a retry, this one waits
        # behind it (step() sends the earliest pending event of each analysis). One still
        # under way here is not in the way: the single delivery thread keeps their order.
        with _dispatcher.lock:
            under_way = list(_dispatcher.in_flight)
        behind = (
            WebhookDelivery.objects.filter(analysis=analysis, status=Status.PENDING)
            .exclude(pk__in=under_way)
            .exists()
        )
        now = timezone.now()
        delivery = WebhookDelivery.objects.create(
            analysis=analysis,
            incident=incident,
            event=str(event.get("event", "")),
            payload=event,
            next_attempt_at=now if behind else now + timedelta(seconds=CLAIM_S),
        )
    except DatabaseError as exc:
        log.warning(
            "analysis %s: webhook event not logged (%s); sending it once without the log",
            analysis.pk,
            exc,
        )
        if analysis.webhook_url:
            _pool.submit(deliver, analysis.webhook_url, event, secret=analysis.webhook_secret)
        return
    if not behind:
        _dispatcher.submit(delivery, url, secret)


def step() -> bool:
    """The worker's part: record finished attempts, start those that are due. True when
    it did either."""
    did = _record_outcomes()
    now = time.monotonic()
    if now >= _dispatcher.next_scan:
        _dispatcher.next_scan = now + SCAN_S
        did |= _start_due()
    return did


def drain(timeout_s: float = TIMEOUT_S * 2) -> None:
    """Finish (bounded) what is under way and due now, and record it: a stopping worker
    leaves the log as it is, not rows claimed for nothing. Retries due later stay in the
    log for the next worker."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        _record_outcomes()
        if not _dispatcher.busy() and not _start_due():
            break
        time.sleep(0.05)
    _record_outcomes()


def _record_outcomes() -> bool:
    did = False
    while True:
        try:
            pk, outcome, at = _dispatcher.outcomes.get_nowait()
        except queue.Empty:
            return did
        try:
            _record(pk, outcome, at)
        except DatabaseError:
            # Recorded on the next step: the outcome goes back into the queue.
            _dispatcher.outcomes.put((pk, outcome, at))
            raise
        with _dispatcher.lock:
            _dispatcher.in_flight.discard(pk)
        did = True


def _record(pk: int, outcome: Outcome, at: datetime) -> None:
    delivery = WebhookDelivery.objects.filter(pk=pk).first()
    if delivery is None or delivery.status != Status.PENDING:
        return  # deleted with its analysis meanwhile, or recorded by another worker
    if outcome.deferred:  # not attempted: due again, behind the earlier event
        WebhookDelivery.objects.filter(pk=pk).update(next_attempt_at=at)
        return
    delivery.attempts += 1
    delivery.last_status_code = outcome.status
    if outcome.delivered:
        delivery.status, delivery.delivered_at = Status.DELIVERED, at
        delivery.next_attempt_at, delivery.last_error = None, ""
    else:
        delivery.last_error = outcome.reason[:MAX_ERROR_CHARS]
        if outcome.retry and delivery.attempts < attempts_allowed():
            delivery.next_attempt_at = at + retry_delay(delivery.attempts)
        else:
            delivery.status, delivery.next_attempt_at = Status.FAILED, None
            log.warning(
                "webhook delivery %s (%s of analysis %s) given up after %d attempts: %s",
                pk,
                delivery.event,
                delivery.analysis_id,
                delivery.attempts,
                delivery.last_error,
            )
    delivery.save(
        update_fields=[
            "attempts",
            "last_status_code",
            "last_error",
            "status",
            "delivered_at",
            "next_attempt_at",
        ]
    )
    if delivery.status != Status.PENDING:  # later events of the analysis may go now
        _dispatcher.unblock(delivery.analysis_id, pk)


def _start_due() -> bool:
    """Start the earliest pending delivery of each analysis, where it is due."""
    now = timezone.now()
    pending = (
        WebhookDelivery.objects.filter(status=Status.PENDING)
        .order_by("pk")
        .values_list("pk", "analysis_id", "next_attempt_at")[:1000]
    )
    first: dict[int, tuple[int, datetime | None]] = {}
    for pk, analysis_id, due in pending:
        first.setdefault(analysis_id, (pk, due))
    started = False
    for analysis_id, (pk, due) in first.items():
        with _dispatcher.lock:
            # An earlier event that is no longer pending (deleted from the log) blocks
            # nothing.
            if _dispatcher.blocked.get(analysis_id, pk) < pk:
                del _dispatcher.blocked[analysis_id]
            if pk in _dispatcher.in_flight:
                continue
        if due is not None and due > now:
            continue
        # Compare-and-set on the due time: of several workers, one takes the attempt.
        claimed = WebhookDelivery.objects.filter(
            pk=pk, status=Status.PENDING, next_attempt_at=due
        ).update(next_attempt_at=now + timedelta(seconds=CLAIM_S))
        if not claimed:
            continue
        delivery = WebhookDelivery.objects.get(pk=pk)
        url, secret = ensure_secret(delivery.analysis_id)
        if not url:
            WebhookDelivery.objects.filter(pk=pk).update(
                status=Status.FAILED, next_attempt_at=None, last_error="the webhook URL was removed"
            )
            continue
        _dispatcher.submit(delivery, url, secret)
        started = True
    return started


# --- the connection -----------------------------------------------------------------------


def _post(
    target: Target,
    addresses: tuple[IPAddress, ...],
    body: bytes,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """POST `body` to `target` over a connection to one of `addresses`; (status, Location)."""
    headers = {"Content-Type": "application/json", "User-Agent": "clipwatch-webhook"}
    headers.update(extra_headers or {})
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
