"""/healthz: is this deployment able to do its job right now?

Three checks, each bounded by a timeout so a hung dependency makes the probe fail fast
instead of hanging it: the database answers a trivial query, the channel layer carries a
message to a private channel and back (the path live scores take), and at least one worker
wrote its heartbeat row recently. The answer is 200 or 503 with a small JSON body that
names no host, password, URL or worker (a load balancer or an uptime service may show it to
anyone); the journal has the details.

Workers call `beat` every HEARTBEAT_SECONDS from their loop and `forget` when they stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from detection.models import WorkerHeartbeat

log = logging.getLogger(__name__)

# How often a worker writes its row; HEALTH_WORKER_STALE_SECONDS (60) must be well above it.
HEARTBEAT_SECONDS = 5.0
# A crashed worker's row is swept this long after it was last seen.
FORGET_AFTER = timedelta(days=1)
DATABASE_TIMEOUT_S = 3.0
CHANNEL_LAYER_TIMEOUT_S = 2.0

OK = "ok"


# --- the worker's side --------------------------------------------------------------------


def beat(owner: str, started_at: datetime) -> None:
    """Record that the worker `owner` is alive now (one UPDATE; an INSERT the first time)."""
    now = timezone.now()
    if WorkerHeartbeat.objects.filter(owner=owner).update(seen_at=now):
        return
    WorkerHeartbeat.objects.update_or_create(
        owner=owner,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at,
            "seen_at": now,
        },
    )
    # First beat of this worker: sweep the rows of workers that died without saying so.
    WorkerHeartbeat.objects.filter(seen_at__lt=now - FORGET_AFTER).delete()


def forget(owner: str) -> None:
    """A worker that stops cleanly is gone, not stale."""
    WorkerHeartbeat.objects.filter(owner=owner).delete()


# --- the checks ---------------------------------------------------------------------------


def check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        log.warning("health: database check failed: %s", exc)
        return "fail (no answer to SELECT 1)"
    return OK


def check_workers(now: datetime | None = None) -> str:
    """`ok (2 alive, last 1 s ago)`, or `fail (...)` when no row is recent enough."""
    now = now or timezone.now()
    stale_s = settings.HEALTH_WORKER_STALE_SECONDS
    try:
        seen = list(WorkerHeartbeat.objects.values_list("seen_at", flat=True))
    except DatabaseError as exc:
        log.warning("health: worker check failed: %s", exc)
        return "fail (heartbeats unreadable)"
    if not seen:
        return "fail (no worker heartbeat)"
    ages = sorted(max(0.0, (now - at).total_seconds()) for at in seen)
    alive = sum(1 for age in ages if age <= stale_s)
    if not alive:
        return f"fail (none alive: last heartbeat {ages[0]:.0f} s ago, stale after {stale_s} s)"
    return f"ok ({alive} alive, last {ages[0]:.0f} s ago)"


async def check_channel_layer(timeout: float | None = None) -> str:
    """Send a message to a new private channel of this process and receive it back."""
    from channels.layers import get_channel_layer

    timeout = CHANNEL_LAYER_TIMEOUT_S if timeout is None else timeout

    layer = get_channel_layer()
    if layer is None:
        return "fail (no channel layer configured)"
    token = uuid.uuid4().hex
    try:
        async with asyncio.timeout(timeout):
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "health.ping", "token": token})
            message = await layer.receive(channel)
    except TimeoutError:
        log.warning("health: the channel layer did not answer within %.1f s", timeout)
        return f"fail (no round trip within {timeout:g} s)"
    except Exception as exc:  # noqa: BLE001 - any failure of the layer is the answer
        log.warning("health: channel layer check failed: %s", exc or type(exc).__name__)
        return "fail (round trip failed)"
    if message.get("token") != token:
        return "fail (another message came back)"
    return OK


async def run_checks() -> dict[str, str]:
    async def bounded(check, name: str) -> str:
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_S):
                return await sync_to_async(check)()
        except TimeoutError:
            log.warning("health: the %s check took over %.1f s", name, DATABASE_TIMEOUT_S)
            return f"fail (no answer within {DATABASE_TIMEOUT_S:g} s)"

    database = await bounded(check_database, "database")
    layer = await check_channel_layer()
    # Heartbeats live in the database: without it there is nothing to read.
    workers = await bounded(check_workers, "worker") if database == OK else "fail (no database)"
    return {"database": database, "channel_layer": layer, "worker": workers}


# --- the view -----------------------------------------------------------------------------


@never_cache
@require_safe
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when every check passes, else 503; no login, GET and HEAD only, never cached."""
    checks = await run_checks()
    healthy = all(result.startswith(OK) for result in checks.values())
    body = {"status": "ok" if healthy else "fail", "checks": checks}
    response = JsonResponse(body, status=200 if healthy else 503)
    # Django logs every 5xx at ERROR ("Service Unavailable: /healthz"); a probe asking every
    # few seconds while a worker is down would flood the log. The failed check has already
    # logged its cause as a WARNING.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
