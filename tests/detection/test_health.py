"""/healthz: the database, the channel layer and a recent worker heartbeat; 200 or 503.

The quick tests drive the view through Django's test client (the in-memory layer); the slow
one asks a real daphne over TCP while a real `run_detector` starts, beats and stops, through
the embedded SQLite layer and (with TEST_REDIS_URL) Redis.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from detection import health
from detection.models import WorkerHeartbeat
from tests.support.processes import migrate_channels, start_daphne, start_worker, stop, tail
from tests.support.services import NO_REDIS_URL, REDIS_URL
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db


def beat(owner: str = "host-a:1:abc", seconds_ago: float = 0.0) -> WorkerHeartbeat:
    now = timezone.now()
    return WorkerHeartbeat.objects.create(
        owner=owner,
        host="host-a",
        pid=1,
        started_at=now - timedelta(minutes=5),
        seen_at=now - timedelta(seconds=seconds_ago),
    )


def get_health(client):
    response = client.get("/healthz")
    return response, json.loads(response.content)


def test_it_answers_200_without_login_when_every_check_passes(client):
    beat(seconds_ago=2)

    response, body = get_health(client)

    assert response.status_code == 200
    assert body == {
        "status": "ok",
        "checks": {
            "database": "ok",
            "channel_layer": "ok",
            "worker": "ok (1 alive, last 2 s ago)",
        },
    }
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"] and "max-age=0" in response["Cache-Control"]


def test_it_answers_503_when_no_worker_ever_beat(client):
    response, body = get_health(client)

    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["worker"] == "fail (no worker heartbeat)"
    assert body["checks"]["database"] == body["checks"]["channel_layer"] == "ok"


def test_it_answers_503_when_every_heartbeat_is_stale(client, settings):
    settings.HEALTH_WORKER_STALE_SECONDS = 60
    beat("host-a:1:abc", seconds_ago=61)
    beat("host-b:2:def", seconds_ago=300)

    response, body = get_health(client)

    assert response.status_code == 503
    assert body["checks"]["worker"] == (
        "fail (none alive: last heartbeat 61 s ago, stale after 60 s)"
    )


def test_it_counts_only_the_workers_alive(client):
    beat("host-a:1:abc", seconds_ago=1)
    beat("host-a:2:def", seconds_ago=3)
    beat("host-b:3:ghi", seconds_ago=3600)

    response, body = get_health(client)

    assert response.status_code == 200
    assert body["checks"]["worker"] == "ok (2 alive, last 1 s ago)"


def test_it_names_no_host_worker_or_setting_in_its_body(client, settings):
    settings.METRICS_TOKEN = "secret-token-value"
    beat("db-secret-host:4242:abcdef")

    response = client.get("/healthz")

    text = response.content.decode()
    for secret in ("db-secret-host", "4242", "abcdef", "secret-token-value", "sqlite"):
        assert secret not in text


def test_it_fails_the_database_check_when_the_database_does_not_answer(client, monkeypatch):
    def broken_cursor(*args, **kwargs):
        raise OperationalError("connection refused (password=hunter2)")

    monkeypatch.setattr(health.connection, "cursor", broken_cursor)

    response, body = get_health(client)

    assert response.status_code == 503
    assert body["checks"]["database"] == "fail (no answer to SELECT 1)"
    assert body["checks"]["worker"] == "fail (no database)"
    assert "hunter2" not in response.content.decode()


class HungLayer:
    """A channel layer whose sends never return (a Redis that accepts and never answers)."""

    async def new_channel(self):
        return "specific.hung!1"

    async def send(self, channel, message):
        import asyncio

        await asyncio.sleep(3600)


def test_it_fails_the_channel_layer_check_within_its_timeout(client, monkeypatch):
    import channels.layers

    beat()
    monkeypatch.setattr(channels.layers, "get_channel_layer", lambda *a: HungLayer())
    monkeypatch.setattr(health, "CHANNEL_LAYER_TIMEOUT_S", 0.3)

    started = time.monotonic()
    response, body = get_health(client)

    assert time.monotonic() - started < 3
    assert response.status_code == 503
    assert body["checks"]["channel_layer"] == "fail (no round trip within 0.3 s)"


def test_it_answers_head_and_refuses_post(client):
    beat()
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


def test_it_records_a_worker_once_and_then_only_moves_its_time():
    started = timezone.now() - timedelta(minutes=1)
    health.beat("me:1:a", started)
    first = WorkerHeartbeat.objects.get(owner="me:1:a")

    health.beat("me:1:a", started)

    again = WorkerHeartbeat.objects.get(owner="me:1:a")
    assert (again.pk, again.started_at) == (first.pk, started)
    assert again.seen_at >= first.seen_at
    assert WorkerHeartbeat.objects.count() == 1


def test_it_sweeps_long_dead_workers_and_forgets_a_stopped_one():
    beat("dead:1:a", seconds_ago=2 * 86400)
    beat("recent:2:b", seconds_ago=120)

    health.beat("me:3:c", timezone.now())
    assert set(WorkerHeartbeat.objects.values_list("owner", flat=True)) == {
        "recent:2:b",
        "me:3:c",
    }

    health.forget("me:3:c")
    assert set(WorkerHeartbeat.objects.values_list("owner", flat=True)) == {"recent:2:b"}


# --- a real daphne and a real worker ----------------------------------------------------------


def fetch_health(port: int) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def follow_a_worker_through_healthz(tmp_path, env):
    migrate_channels(env)
    port = free_port()
    log = tmp_path / "daphne.log"
    server = start_daphne(env, port, log)
    worker = None
    try:
        wait_for_port(port)
        status, body = fetch_health(port)
        assert status == 503, body
        assert body["checks"]["database"] == body["checks"]["channel_layer"] == "ok", body
        assert body["checks"]["worker"] == "fail (no worker heartbeat)"

        worker = start_worker(env)
        # A worker's first beat comes right after start-up (Django, torch: seconds).
        status, body = wait_until(
            lambda: (answer := fetch_health(port))[0] == 200 and answer,
            90,
            "/healthz to answer 200 once the worker beats",
            lambda: f"last answer: {fetch_health(port)}\n{tail(log)}",
        )
        assert body["checks"]["worker"].startswith("ok (1 alive, last ")

        stop(worker, signal.SIGTERM)
        assert worker.returncode == 0, worker.stdout.read() if worker.stdout else ""
        # A clean stop removes the row: the deployment has no worker now, not a slow one.
        status, body = fetch_health(port)
        assert status == 503 and body["checks"]["worker"] == "fail (no worker heartbeat)"
    finally:
        stop(worker)
        stop(server)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tiny_settings")
def test_it_follows_a_real_worker_over_http_through_the_embedded_layer(tmp_path, subprocess_env):
    env = {
        **subprocess_env,
        "CHANNELS_LAYER": "sqlite",
        "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3"),
    }
    follow_a_worker_through_healthz(tmp_path, env)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tiny_settings")
@pytest.mark.skipif(not REDIS_URL, reason=NO_REDIS_URL)
def test_it_follows_a_real_worker_over_http_through_redis(tmp_path, subprocess_env):
    env = {**subprocess_env, "CHANNELS_LAYER": "redis", "REDIS_URL": REDIS_URL}
    follow_a_worker_through_healthz(tmp_path, env)
