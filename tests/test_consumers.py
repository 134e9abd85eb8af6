"""The live socket against the real ASGI `application`, with real sessions."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.models import Session
from django.test import Client

from detection import consumers
from detection.live import ChannelPublisher, group_name
from portal.asgi import application
from tests.factories import AnalysisFactory, CameraFactory, FrameScoreFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
def world():
    viewer = UserFactory(username="viewer")
    stranger = UserFactory(username="stranger")
    camera = CameraFactory(viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="running", window_size=60)
    for i in range(70):
        FrameScoreFactory(analysis=analysis, frame_index=i, time_s=i / 2, score=i / 100)
    return {"viewer": viewer, "stranger": stranger, "analysis": analysis}


async def connect(analysis_id: int, user=None, query: str = "", origin=ORIGIN):
    headers = [origin] if origin else []
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    path = f"/ws/analyses/{analysis_id}/" + (f"?{query}" if query else "")
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()
    return communicator, connected


async def closed_with(communicator: WebsocketCommunicator) -> int:
    message = await communicator.receive_output(timeout=5)
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
        },
    )
    await publish(analysis.pk, "status", {"status": "completed"})
    await publish(analysis.pk, "incident", {"id": 1, "open": True, "peak_score": 0.9})
    await publish(analysis.pk, "frame", {"frame_index": 70, "url": "/x.jpg"})
    await publish(analysis.pk + 1, "score", {"frame_index": 1})  # another analysis
    received = [await ws.receive_json_from(timeout=5) for _ in range(4)]
    assert [m["type"] for m in received] == ["score", "status", "incident", "frame"]
    assert received[0]["previous"] == 69 and received[0]["score"] == 0.9
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
    with caplog.at_level("WARNING", logger="detection.consumers"):
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
