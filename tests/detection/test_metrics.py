"""Prometheus metrics: who may scrape, what the web's /metrics and a worker's port say.

The quick tests use the test client and an in-process worker; the slow one scrapes a real
daphne and a real `run_detector` (its own port) over HTTP from this process, as Prometheus
would, while the worker scores a live MJPEG camera, and parses the answers with
prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
import websockets
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from detection import metrics
from detection.live.publisher import ChannelPublisher
from detection.metrics import Access, access
from detection.models import WorkerHeartbeat
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory
from tests.support.processes import start_daphne, start_worker, stop, tail
from tests.support.sessions import session_cookie
from tests.support.streams import MJPEGServer, free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.support.worker import RecordingPublisher, file_analysis

TOKEN = "s3cret-scrape-token"
LAN = [ipaddress.ip_network("10.0.0.0/8")]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "remote", "token", "networks", "expected"),
    [
        (None, "127.0.0.1", None, [], Access.OFF),
        (f"Bearer {TOKEN}", "127.0.0.1", None, [], Access.OFF),
        (f"Bearer {TOKEN}", "203.0.113.9", TOKEN, [], Access.ALLOWED),
        (f"bearer {TOKEN}", "203.0.113.9", TOKEN, [], Access.ALLOWED),
        ("Bearer wrong", "203.0.113.9", TOKEN, [], Access.FORBIDDEN),
        (f"Basic {TOKEN}", "203.0.113.9", TOKEN, [], Access.FORBIDDEN),
        (None, "203.0.113.9", TOKEN, LAN, Access.FORBIDDEN),
        (None, "10.1.2.3", None, LAN, Access.ALLOWED),
        (None, "::ffff:10.1.2.3", None, LAN, Access.ALLOWED),
        (None, "not an address", TOKEN, LAN, Access.FORBIDDEN),
        ("Bearer wrong", "10.1.2.3", TOKEN, LAN, Access.ALLOWED),
    ],
)
def test_it_lets_in_a_bearer_token_or_an_allowed_network(
    authorization, remote, token, networks, expected
):
    assert access(authorization, remote, token=token, networks=networks) is expected


# --- the web's /metrics ------------------------------------------------------------------------


@pytest.fixture
def token_only(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    return settings


@pytest.mark.django_db
def test_it_is_off_without_a_token_or_networks(client, settings):
    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOWED_NETWORKS = []
    assert client.get("/metrics").status_code == 404


@pytest.mark.django_db
def test_it_refuses_a_scrape_without_the_token(client, token_only):
    assert client.get("/metrics").status_code == 403
    response = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 403
    assert TOKEN not in response.content.decode()


@pytest.mark.django_db
def test_it_reads_analyses_and_heartbeats_from_the_database_at_scrape_time(client, token_only):
    settings = token_only
    settings.HEALTH_WORKER_STALE_SECONDS = 60
    AnalysisFactory.create_batch(2, status="queued")
    AnalysisFactory(status="running")
    now = timezone.now()
    for owner, age in (("a:1:x", 3), ("b:2:y", 600)):
        WorkerHeartbeat.objects.create(
            owner=owner,
            host=owner[0],
            pid=1,
            started_at=now - timedelta(hours=1),
            seen_at=now - timedelta(seconds=age),
        )

    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"]
    found = samples(response.content.decode())
    assert found[("clipwatch_analyses", (("status", "queued"),))] == 2
    assert found[("clipwatch_analyses", (("status", "running"),))] == 1
    assert found[("clipwatch_analyses", (("status", "failed"),))] == 0
    assert found[("clipwatch_workers_alive", ())] == 1
    assert found[("clipwatch_database_up", ())] == 1
    age = found[("clipwatch_worker_heartbeat_age_seconds", (("host", "a"), ("worker", "a:1:x")))]
    assert 3 <= age < 30
    # This process's own metrics come with them.
    assert ("clipwatch_socket_resyncs_total", ()) in found


# --- counted where it happens ------------------------------------------------------------------


def test_it_counts_messages_the_publisher_drops(monkeypatch):
    import channels.layers

    class Broken:
        async def group_send(self, group, message):
            raise ConnectionError("layer down")

    monkeypatch.setattr(channels.layers, "get_channel_layer", lambda *a: Broken())
    before = value("clipwatch_publish_dropped_total")
    publisher = ChannelPublisher()

    publisher.publish(1, "score", {"score": 0.5})  # fails: counted, then paused
    assert publisher.flush(5)  # sent (and failed) by the publisher's own task
    publisher.publish(1, "score", {"score": 0.6})  # dropped during the pause
    assert publisher.flush(5)

    assert value("clipwatch_publish_dropped_total") - before == 2


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.usefixtures("tiny_settings")
def test_it_counts_frames_inference_model_load_and_incidents_of_a_worker(
    media, make_video, django_capture_on_commit_callbacks
):
    analysis = file_analysis(
        make_video("a.avi", frames=40, fps=10.0), threshold=0.0, sampling_fps=5.0
    )
    camera = (str(analysis.camera_id), analysis.camera.name)
    labels = dict(zip(metrics.CAMERA, camera, strict=True))
    before = {
        "frames": value("clipwatch_frames_scored_total", **labels),
        "batches": value("clipwatch_inference_seconds_count"),
        "through": value("clipwatch_inference_frames_total"),
        "incidents": value("clipwatch_incidents_opened_total", **labels),
    }

    with django_capture_on_commit_callbacks(execute=True):
        Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True).run()

    stored = analysis.scores.count()
    assert stored == 20
    assert value("clipwatch_frames_scored_total", **labels) - before["frames"] == stored
    assert value("clipwatch_inference_frames_total") - before["through"] == stored
    assert value("clipwatch_inference_seconds_count") - before["batches"] >= stored / 4
    assert value("clipwatch_model_load_seconds") > 0
    assert analysis.incidents.count() >= 1
    opened = value("clipwatch_incidents_opened_total", **labels) - before["incidents"]
    assert opened == analysis.incidents.count()
    # A file's frames have no capture time: no lag is made up for them.
    assert value("clipwatch_scoring_lag_seconds_count", **labels) == 0


def test_it_serves_a_port_with_the_same_rule_and_moves_up_when_it_is_taken():
    registry = CollectorRegistry()
    Counter("probe", "A probe.", registry=registry).inc(3)

    def check(authorization, remote):
        return access(authorization, remote, token=TOKEN, networks=[])

    port = free_port()
    first, first_port = metrics.serve(port, "127.0.0.1", check=check, registry=registry)
    second, second_port = metrics.serve(port, "127.0.0.1", check=check, registry=registry)
    try:
        assert first_port == port and second_port > port
        url = f"http://127.0.0.1:{second_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 403
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert samples(response.read().decode())[("probe_total", ())] == 3
    finally:
        for server in (first, second):
            server.shutdown()
            server.server_close()


# --- a real scrape of a real daphne and a real worker ------------------------------------------


def scrape(url: str, token: str | None = TOKEN) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""  # not listening yet


async def ask_for_a_resync(port: int, analysis_id: int, cookie: str) -> None:
    url = f"ws://127.0.0.1:{port}/ws/analyses/{analysis_id}/"
    async with websockets.connect(
        url, additional_headers={"Cookie": cookie}, origin=f"http://127.0.0.1:{port}"
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        await ws.send(json.dumps({"type": "resync", "after": 0}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert reply["type"] == "snapshot" and reply["resync"] is True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tiny_settings")
def test_it_is_scraped_over_http_from_daphne_and_from_the_workers_own_port(
    tmp_path, subprocess_env
):
    worker_port = free_port()
    env = {
        **subprocess_env,
        "CHANNELS_LAYER": "sqlite",
        "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3"),
        "METRICS_TOKEN": TOKEN,
        # Not loopback: this process must present the token like a remote Prometheus.
        "METRICS_ALLOWED_NETWORKS": "192.0.2.0/24",
        "DETECTION_METRICS_PORT": str(worker_port),
    }
    from tests.support.processes import migrate_channels

    migrate_channels(env)
    viewer = UserFactory(username="watcher")
    web_port = free_port()
    log = tmp_path / "daphne.log"
    worker = server = None
    with MJPEGServer(fps=10) as stream:
        camera = CameraFactory(kind="stream", source=stream.url, name="Gate", viewers=[viewer])
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=5.0, motion_gating=False, threshold=0.0
        )
        labels = (("camera", "Gate"), ("camera_id", str(camera.pk)))
        try:
            server = start_daphne(env, web_port, log)
            worker = start_worker(env)
            wait_for_port(web_port)
            worker_url = f"http://127.0.0.1:{worker_port}/metrics"

            def worker_samples():
                status, text = scrape(worker_url)
                found = samples(text) if status == 200 else {}
                return found.get(("clipwatch_frames_scored_total", labels), 0) >= 10 and found

            found = wait_until(
                worker_samples,
                120,
                "10 frames counted on the worker's metrics port",
                lambda: f"scrape: {scrape(worker_url)[0]}; analysis {analysis.scores.count()}",
            )
            assert scrape(worker_url, token=None)[0] == 403
            assert scrape(worker_url, token="wrong")[0] == 403
            assert found[("clipwatch_model_load_seconds", ())] > 0
            assert found[("clipwatch_inference_seconds_count", ())] >= 1
            assert found[("clipwatch_inference_frames_total", ())] >= 10
            lag_count = found[("clipwatch_scoring_lag_seconds_count", labels)]
            lag_sum = found[("clipwatch_scoring_lag_seconds_sum", labels)]
            assert lag_count >= 10 and 0 < lag_sum / lag_count < 10, (lag_sum, lag_count)
            assert found[("clipwatch_incidents_opened_total", labels)] >= 1
            assert ("clipwatch_publish_dropped_total", ()) in found

            asyncio.run(ask_for_a_resync(web_port, analysis.pk, session_cookie(viewer)))
            web_url = f"http://127.0.0.1:{web_port}/metrics"
            assert scrape(web_url, token=None)[0] == 403
            status, text = scrape(web_url)
            assert status == 200, tail(log)
            web = samples(text)
            assert web[("clipwatch_analyses", (("status", "running"),))] == 1
            assert web[("clipwatch_workers_alive", ())] == 1
            ((age,),) = [
                (v,) for (n, _), v in web.items() if n == "clipwatch_worker_heartbeat_age_seconds"
            ]
            assert 0 <= age < 30
            assert web[("clipwatch_socket_resyncs_total", ())] >= 1
            # The worker's counters are its own: the web process never scored a frame.
            assert ("clipwatch_frames_scored_total", labels) not in web
            print(
                f"\nscoring lag (capture to stored), live camera at 5 frames/s: mean "
                f"{lag_sum / lag_count * 1000:.0f} ms over {lag_count:.0f} frames"
            )
        finally:
            stop(worker, signal.SIGTERM)
            stop(server)


# --- the dashboard and the guide name metrics that exist -------------------------------------


def known_series() -> set[str]:
    """Every series name the project exposes (a counter's `_total`, a histogram's parts)."""
    from detection.metrics import DatabaseCollector

    families = [f for f in REGISTRY.collect() if f.name.startswith("clipwatch_")]
    names = set()
    for family in families:
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    names |= {f.name for f in DatabaseCollector().collect()}
    return names


@pytest.mark.django_db
def test_it_ships_a_dashboard_and_alert_rules_over_metrics_that_exist():
    import re

    from tests.support import ROOT

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "clipwatch.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 6
    guide = (ROOT / "docs" / "deployment.md").read_text()
    metrics_section = guide.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"clipwatch_[a-z_]+", " ".join(expressions) + metrics_section))
    known = known_series()
    assert "clipwatch_workers_alive" in known and "clipwatch_frames_scored_total" in known
    # The guide also names histograms by their family (clipwatch_inference_seconds).
    families = {name.removesuffix(s) for name in known for s in ("_bucket", "_count", "_sum")}
    assert sorted(used - known - families) == []
