"""Prometheus metrics (prometheus_client): what each process counts, and how it is scraped.

Two kinds of process count different things, and each is scraped on its own:

- A **worker** (run_detector) counts what it does: frames scored and stored per camera,
  scoring lag (capture to stored, live cameras), incidents opened, messages to live pages
  it could not publish, model load time, inference time per batch. It serves them on its
  own port (DETECTION_METRICS_PORT, the first free one of that port and the 15 after it,
  so several workers on one machine each get one) from a thread of its own. Workers run on
  other machines too, which is why this is not prometheus_client's multiprocess mode (one
  machine only, and a shared directory to clean).
- The **web process** (daphne) serves /metrics: its own counters (resync requests from live
  pages), plus gauges read from the database at scrape time (analyses per status, each
  worker's heartbeat age, workers alive): the same answer whichever web process is asked,
  so several web processes do not disagree.

Both answer only to a scraper that presents `Authorization: Bearer <METRICS_TOKEN>` or
comes from METRICS_ALLOWED_NETWORKS: 403 otherwise, and 404 (metrics off) when neither is
configured. Counter names get `_total` from prometheus_client.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# --- the worker's metrics -------------------------------------------------------------------

CAMERA = ("camera_id", "camera")

FRAMES_SCORED = Counter("clipwatch_frames_scored", "Frames scored and stored, per camera.", CAMERA)
SCORING_LAG = Histogram(
    "clipwatch_scoring_lag_seconds",
    "Live cameras: from a frame's capture to its score stored in the database.",
    CAMERA,
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120),
)
INCIDENTS_OPENED = Counter("clipwatch_incidents_opened", "Incidents opened, per camera.", CAMERA)
PUBLISH_DROPPED = Counter(
    "clipwatch_publish_dropped",
    "Messages to live pages the worker did not publish (channel layer down, slow or full); "
    "pages fetch what they missed from the database.",
)
MODEL_LOAD_SECONDS = Gauge(
    "clipwatch_model_load_seconds", "How long this worker's model load took (download included)."
)
INFERENCE_SECONDS = Histogram(
    "clipwatch_inference_seconds",
    "One forward pass of the model over a batch of frames.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
INFERENCE_FRAMES = Counter(
    "clipwatch_inference_frames", "Frames through the model (a batch's size summed)."
)

# --- the web process's own ------------------------------------------------------------------

SOCKET_RESYNCS = Counter(
    "clipwatch_socket_resyncs",
    "Resync requests from live pages: each noticed a gap (a dropped message) or reconnected.",
)


def camera_labels(camera_id: int, name: str) -> tuple[str, str]:
    return str(camera_id), name


def observe_stored(camera: tuple[str, str], frames: int, lags: Iterable[float]) -> None:
    """A batch of one camera's frames stored: count them, and the lag of the live ones."""
    FRAMES_SCORED.labels(*camera).inc(frames)
    histogram = SCORING_LAG.labels(*camera)
    for lag in lags:
        histogram.observe(max(0.0, lag))


def _incident_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    from django.db import transaction

    def count() -> None:
        # The recorder's own analysis, cached with its camera: no query in the worker.
        analysis = instance.analysis
        INCIDENTS_OPENED.labels(*camera_labels(analysis.camera_id, analysis.camera.name)).inc()

    # Counted once committed: a store that rolls back opened nothing.
    transaction.on_commit(count)


def count_incidents() -> None:
    """Count incidents this process opens (the worker calls it when it starts serving)."""
    from django.db.models.signals import post_save

    from detection.models import Incident

    post_save.connect(_incident_saved, sender=Incident, dispatch_uid="detection.metrics.incidents")


# --- who may scrape --------------------------------------------------------------------------


class Access(Enum):
    ALLOWED = 200
    FORBIDDEN = 403
    OFF = 404


def access(
    authorization: str | None,
    remote_addr: str | None,
    *,
    token: str | None,
    networks: Sequence[Network],
) -> Access:
    """The one rule for both endpoints: an allowed network, or the bearer token."""
    if not token and not networks:
        return Access.OFF
    if networks and remote_addr:
        try:
            address = ipaddress.ip_address(remote_addr.split("%", 1)[0])
        except ValueError:
            address = None
        if address is not None:
            # An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
            mapped = getattr(address, "ipv4_mapped", None)
            if any((mapped or address) in network for network in networks):
                return Access.ALLOWED
    if token and authorization:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), token.encode()
        ):
            return Access.ALLOWED
    return Access.FORBIDDEN


def configured_access(authorization: str | None, remote_addr: str | None) -> Access:
    from django.conf import settings

    return access(
        authorization,
        remote_addr,
        token=settings.METRICS_TOKEN,
        networks=settings.METRICS_ALLOWED_NETWORKS,
    )


# --- gauges read from the database at scrape time ------------------------------------------


class DatabaseCollector(Collector):
    """Analyses per status and the workers' heartbeats, read when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.conf import settings
        from django.db import DatabaseError
        from django.db.models import Count
        from django.utils import timezone

        from detection.models import Analysis, WorkerHeartbeat

        up = GaugeMetricFamily(
            "clipwatch_database_up", "1 when the web process could read the database gauges."
        )
        try:
            by_status = dict(
                Analysis.objects.order_by()
                .values_list("status")
                .annotate(n=Count("pk"))
                .values_list("status", "n")
            )
            beats = list(WorkerHeartbeat.objects.values_list("owner", "host", "seen_at"))
        except DatabaseError as exc:
            log.warning("metrics: database gauges unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        analyses = GaugeMetricFamily(
            "clipwatch_analyses",
            "Analyses per status (queued: waiting for a worker).",
            labels=["status"],
        )
        for status in Analysis.Status.values:
            analyses.add_metric([status], by_status.get(status, 0))
        yield analyses
        now = timezone.now()
        age = GaugeMetricFamily(
            "clipwatch_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat (a cleanly stopped worker has none).",
            labels=["worker", "host"],
        )
        stale_s = settings.HEALTH_WORKER_STALE_SECONDS
        alive = 0
        for owner, host, seen_at in beats:
            seconds = max(0.0, (now - seen_at).total_seconds())
            age.add_metric([owner, host], seconds)
            alive += seconds <= stale_s
        yield age
        workers = GaugeMetricFamily(
            "clipwatch_workers_alive",
            "Workers whose heartbeat is younger than HEALTH_WORKER_STALE_SECONDS.",
        )
        workers.add_metric([], alive)
        yield workers


_database_registry = CollectorRegistry(auto_describe=False)
_database_registry.register(DatabaseCollector())


def web_exposition() -> bytes:
    """What /metrics answers: this process's metrics, then the database gauges."""
    return generate_latest(REGISTRY) + generate_latest(_database_registry)


# --- the worker's own port ---------------------------------------------------------------------


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr would drown the worker's log


def _guarded(app: Callable[..., Any], check: Callable[[str | None, str | None], Access]):
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        verdict = check(environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR"))
        if verdict is not Access.ALLOWED:
            reason = "403 Forbidden" if verdict is Access.FORBIDDEN else "404 Not Found"
            start_response(reason, [("Content-Type", "text/plain; charset=utf-8")])
            return [reason.encode() + b"\n"]
        return app(environ, start_response)

    return guarded


def serve(
    port: int,
    address: str,
    *,
    check: Callable[[str | None, str | None], Access] = configured_access,
    registry: CollectorRegistry = REGISTRY,
    tries: int = 16,
) -> tuple[WSGIServer, int]:
    """Serve `registry` on the first free port of port .. port + tries - 1, in a daemon
    thread; the same access rule as the web's /metrics. Returns the server and its port."""
    app = _guarded(make_wsgi_app(registry), check)
    last_error: OSError | None = None
    for candidate in range(port, port + tries):
        try:
            server = make_server(
                address,
                candidate,
                app,
                _Server6 if ":" in address else _Server,
                handler_class=_QuietHandler,
            )
        except OSError as exc:  # in use: another worker on this machine has it
            last_error = exc
            continue
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return server, server.server_address[1]
    raise OSError(f"no free port for metrics in {port}-{port + tries - 1}: {last_error}")


def serve_worker_metrics() -> WSGIServer | None:
    """Start the worker's metrics port when DETECTION_METRICS_PORT is set; log where."""
    from django.conf import settings

    port = settings.DETECTION_METRICS_PORT
    if not port:
        return None
    address = settings.DETECTION_METRICS_ADDRESS
    try:
        server, bound = serve(port, address)
    except OSError as exc:
        # Metrics are not worth a worker that does not score: carry on without them.
        log.warning("metrics not served: %s", exc)
        return None
    if not settings.METRICS_TOKEN and not settings.METRICS_ALLOWED_NETWORKS:
        log.warning(
            "metrics on %s:%d answer 404: set METRICS_TOKEN or METRICS_ALLOWED_NETWORKS",
            address,
            bound,
        )
    else:
        log.info("metrics served on http://%s:%d/metrics", address, bound)
    return server


# --- the web's /metrics --------------------------------------------------------------------


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    verdict = configured_access(
        request.headers.get("Authorization"), request.META.get("REMOTE_ADDR")
    )
    if verdict is Access.OFF:
        raise Http404("metrics are off: set METRICS_TOKEN or METRICS_ALLOWED_NETWORKS")
    if verdict is Access.FORBIDDEN:
        return HttpResponseForbidden("a bearer token or an allowed address is required\n")
    return HttpResponse(web_exposition(), content_type=CONTENT_TYPE_LATEST)
