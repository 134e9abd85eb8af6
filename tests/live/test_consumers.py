"""The live socket against the real ASGI `application`, with real sessions."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session

from detection.live import consumers
from detection.live.publisher import ChannelPublisher, group_name
from portal.asgi import application
from tests.support.factories import AnalysisFactory, CameraFactory, FrameScoreFactory
from tests.support.sessions import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")
# Every browser handshake carries Host; the Origin check compares the two (port included).
HOST = (b"host", b"localhost")
PEER = ("203.0.113.7", 50123)


@pytest.fixture
def world(viewer, stranger):
    camera = CameraFactory(viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="running", window_size=60)
    for i in range(70):
        FrameScoreFactory(analysis=analysis, frame_index=i, time_s=i / 2, score=i / 100)
    return {"viewer": viewer, "stranger": stranger, "analysis": analysis}


async def connect(analysis_id: int, user=None, query: str = "", origin=ORIGIN, host=HOST, extra=()):
    headers = [h for h in (origin, host) if h] + list(extra)
    if user is not None:
        cookie = await sync_to_async(session_cookie)(user)
        headers.append((b"cookie", cookie.encode()))
    path = f"/ws/analyses/{analysis_id}/" + (f"?{query}" if query else "")
    communicator = WebsocketCommunicator(application, path, headers=headers)
    # The scope daphne builds names the peer; the application reads it when it first runs.
    communicator.scope["client"] = PEER
    connected, _ = await communicator.connect()
    return communicator, connected


async def closed_with(communicator: WebsocketCommunicator, timeout: float = 5) -> int:
    message = await communicator.receive_output(timeout=timeout)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def test_it_sends_the_last_window_as_a_snapshot(world):
    analysis = world["analysis"]
    ws, connected = await connect(analysis.pk, world["viewer"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot" and snapshot["analysis"] == analysis.pk
    assert [s["frame_index"] for s in snapshot["scores"]] == list(range(10, 70))
    assert snapshot["threshold"] == analysis.threshold and snapshot["window_size"] == 60
    assert snapshot["status"] == "running" and snapshot["resync"] is False
    assert snapshot["summary"]["frames_scored"] == analysis.frames_scored
    await ws.disconnect()


async def test_it_sends_exactly_what_a_reconnecting_page_missed(world):
    ws, _ = await connect(world["analysis"].pk, world["viewer"], query="after=64")
    snapshot = await ws.receive_json_from(timeout=5)
    assert [s["frame_index"] for s in snapshot["scores"]] == [65, 66, 67, 68, 69]
    assert snapshot["resync"] is True
    # The same on request, on an open socket.
    await ws.send_json_to({"type": "resync", "after": 67})
    again = await ws.receive_json_from(timeout=5)
    assert [s["frame_index"] for s in again["scores"]] == [68, 69]
    await ws.disconnect()


async def test_it_relays_what_the_worker_publishes(world):
    analysis = world["analysis"]
    ws, _ = await connect(analysis.pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    publish = sync_to_async(ChannelPublisher().publish)
    await publish(
        analysis.pk,
        "score",
        {
            "frame_index": 70,
            "time_s": 35.0,
            "score": 0.9,
            "normal": 0.1,
            "anomaly": 0.3,
            "previous": 69,
            "frame_url": "/x.jpg?v=70",
        },
    )
    await publish(analysis.pk, "status", {"status": "completed"})
    await publish(analysis.pk, "incident", {"id": 1, "open": True, "peak_score": 0.9})
    await publish(analysis.pk, "progress", {"progress": 0.5, "scored": 71, "expected": 140})
    await publish(analysis.pk + 1, "score", {"frame_index": 1})  # another analysis
    received = [await ws.receive_json_from(timeout=5) for _ in range(4)]
    assert [m["type"] for m in received] == ["score", "status", "incident", "progress"]
    assert received[0]["previous"] == 69 and received[0]["score"] == 0.9
    # The score of a new picture says so itself: no separate message per picture.
    assert received[0]["frame_url"] == "/x.jpg?v=70"
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_it_ignores_a_kind_of_message_it_does_not_relay(world):
    # A worker of another release (the "frame" notices of old, during an upgrade) must not
    # fail every socket of the analysis with 1011 at each message.
    analysis = world["analysis"]
    ws, _ = await connect(analysis.pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    publish = sync_to_async(ChannelPublisher().publish)
    await publish(analysis.pk, "frame", {"frame_index": 70, "url": "/x.jpg"})
    await publish(analysis.pk, "status", {"status": "completed"})
    assert await ws.receive_json_from(timeout=5) == {"type": "status", "status": "completed"}
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_it_ignores_malformed_requests(world):
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    for junk in (
        {"type": "resync", "after": "1; drop table"},
        {"type": "delete"},
        [1, 2],
        {"type": "resync", "after": True},
    ):
        await ws.send_json_to(junk)
    for text in (" ", "not json", "{"):
        await ws.send_to(text_data=text)
    await ws.send_to(bytes_data=b"\x00\x01")
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


def assert_no_group_joined(analysis_id: int) -> None:
    layer = get_channel_layer()
    assert not layer.groups.get(group_name(analysis_id))


async def test_it_closes_anonymous_sockets_before_joining(world):
    ws, _ = await connect(world["analysis"].pk)
    # The very first message after the handshake is the close: no snapshot, no score.
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN
    assert_no_group_joined(world["analysis"].pk)


async def test_it_closes_sockets_of_users_without_access_and_logs_it(world, caplog):
    analysis_id = world["analysis"].pk
    with caplog.at_level("WARNING", logger="detection.live.consumers"):
        ws, _ = await connect(analysis_id, world["stranger"])
        assert await closed_with(ws) == consumers.CLOSE_NOT_FOUND
    refusals = [r.getMessage() for r in caplog.records if "socket refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "'stranger'" in refusals[0] and f"analysis {analysis_id}" in refusals[0]
    ws, _ = await connect(999_999, world["viewer"])
    assert await closed_with(ws) == consumers.CLOSE_NOT_FOUND
    # Nothing published afterwards reaches a refused socket's channel.
    assert_no_group_joined(analysis_id)


@pytest.mark.parametrize("origin", [(b"origin", b"http://evil.example.com"), None])
async def test_it_refuses_foreign_or_missing_origins(world, origin):
    # A page on another site (cross-site websocket hijacking), or a client that sends no
    # Origin at all, is refused at the handshake: the consumer never runs.
    _, connected = await connect(world["analysis"].pk, world["viewer"], origin=origin)
    assert connected is False
    assert_no_group_joined(world["analysis"].pk)


async def test_it_closes_when_access_is_revoked(world, monkeypatch):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    analysis = world["analysis"]
    ws, _ = await connect(analysis.pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    await sync_to_async(analysis.camera.viewers.clear)()
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN


async def test_it_closes_when_the_session_logs_out(world, monkeypatch):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    await sync_to_async(lambda: Session.objects.all().delete())()
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN


# --- The re-check: deleted, deactivated, re-passworded users; a failing re-check ----------


async def test_it_closes_when_the_user_is_deleted(world, monkeypatch):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    await sync_to_async(world["viewer"].delete)()
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN


async def test_it_closes_when_the_user_is_deactivated(world, monkeypatch):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    viewer = world["viewer"]
    ws, _ = await connect(world["analysis"].pk, viewer)
    await ws.receive_json_from(timeout=5)
    await sync_to_async(type(viewer).objects.filter(pk=viewer.pk).update)(is_active=False)
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN


async def test_it_closes_when_the_password_changes(world, monkeypatch):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    viewer = world["viewer"]
    ws, _ = await connect(world["analysis"].pk, viewer)
    await ws.receive_json_from(timeout=5)

    def change_password() -> None:
        viewer.set_password("a-new-Passphrase-43")
        viewer.save()

    await sync_to_async(change_password)()
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN


async def test_it_closes_when_the_secret_key_rotates_without_a_fallback(
    world, monkeypatch, settings
):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    # Every session hash (and the signed session data) was made with the old key.
    settings.SECRET_KEY = "rotated-" + settings.SECRET_KEY
    assert await closed_with(ws) == consumers.CLOSE_FORBIDDEN


async def test_it_keeps_a_socket_whose_session_verifies_with_a_fallback_key(
    world, monkeypatch, settings
):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    # A key rotation done right (Django's SECRET_KEY_FALLBACKS) logs nobody out.
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "rotated-" + settings.SECRET_KEY
    assert await ws.receive_nothing(timeout=1.0)  # five re-checks
    await ws.send_json_to({"type": "resync", "after": 67})
    assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
    await ws.disconnect()


async def test_it_logs_and_closes_when_the_re_check_fails_unexpectedly(world, monkeypatch, caplog):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.2)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the re-check")

    monkeypatch.setattr(consumers, "stored_state", broken)
    analysis_id = world["analysis"].pk
    with caplog.at_level("ERROR", logger="detection.live.consumers"):
        ws, _ = await connect(analysis_id, world["viewer"])
        await ws.receive_json_from(timeout=5)
        # 1011 (internal error): the page retries, as after any server failure.
        assert await closed_with(ws) == 1011
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"analysis {analysis_id}" in record.getMessage() and record.exc_info


# --- Requests: one resync at a time, a rate limit, junk ----------------------------------


async def test_it_answers_one_resync_at_a_time_and_coalesces_the_rest(world, monkeypatch):
    read = consumers.snapshot

    def slow_snapshot(*args: object):
        time.sleep(0.3)  # requests that arrive meanwhile wait for this reply
        return read(*args)

    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    monkeypatch.setattr(consumers, "snapshot", slow_snapshot)
    for after in (60, 66, 62, 68):
        await ws.send_json_to({"type": "resync", "after": after})
    replies = []
    while not await ws.receive_nothing(timeout=1.0):
        replies.append(await ws.receive_json_from())
    # The first request, then one follow-up for the three that came while it was read,
    # from the smallest `after` among them: each of them gets all it asked for.
    assert [r["scores"][0]["frame_index"] for r in replies] == [61, 63]
    assert all(r["scores"][-1]["frame_index"] == 69 for r in replies)
    await ws.disconnect()


async def test_it_closes_a_socket_that_floods_requests_and_logs_it(world, caplog):
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    with caplog.at_level("WARNING", logger="detection.live.consumers"):
        for _ in range(100):
            await ws.send_json_to({"type": "resync", "after": -1})
        replies = 0
        while (message := await ws.receive_output(timeout=5))["type"] == "websocket.send":
            replies += 1
    assert message["code"] == 4429  # "too many requests": the page reconnects later
    assert replies <= 3
    (warning,) = [r.getMessage() for r in caplog.records if "too many" in r.getMessage()]
    assert "'viewer'" in warning and "203.0.113.7:50123" in warning
    assert f"analysis {world['analysis'].pk}" in warning


async def test_it_closes_a_socket_that_asks_for_more_than_its_snapshot_budget(world, monkeypatch):
    # The first snapshot (60 scores) is ~9.7 KB of JSON, a resync of all 70 ~11.3 KB: 12 KB,
    # refilled at a byte a second, pays for the first and one resync (it may end in debt).
    monkeypatch.setattr(consumers, "SNAPSHOT_BUDGET_BYTES", 12_000)
    monkeypatch.setattr(consumers, "SNAPSHOT_REFILL_BYTES_PER_SECOND", 1)
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    await ws.send_json_to({"type": "resync", "after": -1})
    assert len((await ws.receive_json_from(timeout=5))["scores"]) == 70
    await ws.send_json_to({"type": "resync", "after": -1})
    assert await closed_with(ws) == 4429


async def test_it_ignores_deeply_nested_json(world, caplog):
    ws, _ = await connect(world["analysis"].pk, world["viewer"])
    await ws.receive_json_from(timeout=5)
    with caplog.at_level("WARNING"):
        await ws.send_to(text_data="[" * 100_000)
        await ws.send_to(text_data='{"type": "resync", "after": ' + "[" * 50_000 + "]" * 50_000)
        assert await ws.receive_nothing(timeout=0.3)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    # Still open, and still answering.
    await ws.send_json_to({"type": "resync", "after": 67})
    assert [s["frame_index"] for s in (await ws.receive_json_from(timeout=5))["scores"]] == [68, 69]
    await ws.disconnect()


# --- The Origin check: Django's CSRF rule (scheme, host and port) -------------------------

PROXY_SSL = {"SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https")}


async def connect_from(world, settings, host, origin, extra, overrides):
    """The viewer's handshake with this Host and Origin, under these settings."""
    for name, value in overrides.items():
        setattr(settings, name, value)
    return await connect(
        world["analysis"].pk,
        world["viewer"],
        origin=(b"origin", origin),
        host=(b"host", host),
        extra=extra,
    )


@pytest.mark.parametrize(
    ("host", "origin", "extra", "overrides"),
    [
        pytest.param(b"localhost:8000", b"http://localhost:9999", (), {}, id="another-port"),
        pytest.param(b"localhost:8000", b"http://localhost", (), {}, id="default-port"),
        pytest.param(b"localhost", b"https://localhost", (), {}, id="https-on-plain-ws"),
        pytest.param(
            b"localhost",
            b"https://localhost",
            [(b"x-forwarded-proto", b"https")],
            {},
            id="forwarded-proto-not-trusted",
        ),
        pytest.param(
            b"evil.example.com", b"http://evil.example.com", (), {}, id="host-not-allowed"
        ),
        pytest.param(
            b"localhost",
            b"http://watch.example.com",
            (),
            {"CSRF_TRUSTED_ORIGINS": ["https://*.example.com"]},
            id="trusted-other-scheme",
        ),
        pytest.param(
            b"localhost",
            b"https://watch.example.com:8443",
            (),
            {"CSRF_TRUSTED_ORIGINS": ["https://*.example.com"]},
            id="trusted-other-port",
        ),
    ],
)
async def test_it_refuses_an_origin_on_another_port_scheme_or_host(
    world, settings, host, origin, extra, overrides
):
    _, connected = await connect_from(world, settings, host, origin, extra, overrides)
    assert connected is False
    assert_no_group_joined(world["analysis"].pk)


@pytest.mark.parametrize(
    ("host", "origin", "extra", "overrides"),
    [
        pytest.param(b"localhost:8000", b"http://localhost:8000", (), {}, id="own-origin"),
        pytest.param(
            b"127.0.0.1:8443",
            b"https://127.0.0.1:8443",
            [(b"x-forwarded-proto", b"https")],
            PROXY_SSL,
            id="behind-a-tls-proxy",
        ),
        pytest.param(
            b"localhost",
            b"https://portal.example.com",
            (),
            {"CSRF_TRUSTED_ORIGINS": ["https://portal.example.com"]},
            id="trusted-exact",
        ),
        pytest.param(
            b"localhost",
            b"https://watch.example.com",
            (),
            {"CSRF_TRUSTED_ORIGINS": ["https://*.example.com"]},
            id="trusted-subdomain",
        ),
    ],
)
async def test_it_accepts_its_own_origin_port_included_or_a_trusted_one(
    world, settings, host, origin, extra, overrides
):
    ws, connected = await connect_from(world, settings, host, origin, extra, overrides)
    assert connected is True
    assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
    await ws.disconnect()
