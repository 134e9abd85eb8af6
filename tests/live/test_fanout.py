"""One subscription per process and analysis (detection/live/consumers.py, `_Hub`): the
worker's message reaches the process once, every local socket of the analysis relays it."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.layers import get_channel_layer
from redis.exceptions import ConnectionError as RedisConnectionError

from detection.live import consumers
from detection.live.publisher import group_name
from tests.live.test_consumers import closed_with, connect
from tests.support.factories import AnalysisFactory, CameraFactory, FrameScoreFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(viewer):
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]), status="running")
    return {"viewer": viewer, "analysis": analysis}


async def test_it_joins_the_group_once_for_all_the_sockets_of_an_analysis(world):
    analysis = world["analysis"]
    sockets = [(await connect(analysis.pk, world["viewer"]))[0] for _ in range(3)]
    for ws in sockets:
        assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
    layer = get_channel_layer()
    group = group_name(analysis.pk)
    assert len(layer.groups[group]) == 1

    await layer.group_send(group, {"type": "analysis.status", "status": "completed"})
    for ws in sockets:
        assert await ws.receive_json_from(timeout=5) == {"type": "status", "status": "completed"}

    await sockets[0].disconnect()
    await layer.group_send(group, {"type": "analysis.progress", "progress": 0.5})
    for ws in sockets[1:]:
        assert await ws.receive_json_from(timeout=5) == {"type": "progress", "progress": 0.5}
    for ws in sockets[1:]:
        await ws.disconnect()
    assert not layer.groups.get(group)  # the last socket out leaves the group


async def test_it_closes_every_local_socket_when_the_layer_fails_under_them(world, monkeypatch):
    analysis = world["analysis"]
    sockets = [(await connect(analysis.pk, world["viewer"]))[0] for _ in range(2)]
    for ws in sockets:
        await ws.receive_json_from(timeout=5)
    (hub,) = [h for hubs in consumers._Hub.hubs.values() for h in hubs.values()]

    async def receive(self, channel):
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr(type(hub.layer), "receive", receive)
    hub.pump.cancel()
    hub.pump = consumers.asyncio.ensure_future(hub._pump())
    for ws in sockets:
        assert await closed_with(ws) == consumers.CLOSE_UNAVAILABLE
        await ws.wait()


# The hub relays a message itself to a socket with nothing before it, and queues it in the
# socket's inbox otherwise: the page must still see every message in order.


def score_message(index: int) -> dict:
    return {
        "type": "analysis.score",
        "frame_index": index,
        "time_s": index / 2,
        "score": 0.5,
        "normal": 0.1,
        "anomaly": 0.2,
        "previous": index - 1,
    }


@pytest.fixture
def scored(viewer):
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]), status="running")
    for i in range(70):
        FrameScoreFactory(analysis=analysis, frame_index=i, time_s=i / 2, score=i / 100)
    return {"viewer": viewer, "analysis": analysis}


def slowed_snapshots(monkeypatch, seconds: float = 0.3) -> None:
    read = consumers.snapshot

    def slow_snapshot(*args: object):
        time.sleep(seconds)
        return read(*args)

    monkeypatch.setattr(consumers, "snapshot", slow_snapshot)


async def test_it_relays_what_is_published_during_the_handshake_after_the_snapshot(
    scored, monkeypatch
):
    analysis = scored["analysis"]
    slowed_snapshots(monkeypatch)
    connecting = asyncio.ensure_future(connect(analysis.pk, scored["viewer"]))
    loop = asyncio.get_running_loop()
    while not consumers._Hub.hubs.get(loop):  # joined; the snapshot is being read
        await asyncio.sleep(0.01)
    await get_channel_layer().group_send(group_name(analysis.pk), score_message(70))
    ws, _ = await connecting
    first = await ws.receive_json_from(timeout=5)
    assert first["type"] == "snapshot" and first["scores"][-1]["frame_index"] == 69
    assert (await ws.receive_json_from(timeout=5))["frame_index"] == 70
    await ws.disconnect()


async def test_it_keeps_the_order_when_the_hub_relays_behind_a_queued_message(scored, monkeypatch):
    analysis = scored["analysis"]
    group = group_name(analysis.pk)
    layer = get_channel_layer()
    ws, _ = await connect(analysis.pk, scored["viewer"])
    await ws.receive_json_from(timeout=5)
    slowed_snapshots(monkeypatch)
    encode = consumers.AnalysisConsumer.encode_json

    async def slow_for_70(content):
        if content.get("frame_index") == 70:
            await asyncio.sleep(0.3)  # the socket's own task is still relaying 70
        return await encode(content)

    monkeypatch.setattr(consumers.AnalysisConsumer, "encode_json", staticmethod(slow_for_70))
    await ws.send_json_to({"type": "resync", "after": 65})
    await asyncio.sleep(0.1)  # the resync is being read: 70 waits in the inbox for its reply
    await layer.group_send(group, score_message(70))
    reply = await ws.receive_json_from(timeout=5)
    assert reply["type"] == "snapshot" and reply["resync"]
    assert [reply["scores"][0]["frame_index"], reply["scores"][-1]["frame_index"]] == [66, 69]
    # 71 reaches the hub while the socket relays 70 from its inbox: it must not overtake.
    await layer.group_send(group, score_message(71))
    received = [(await ws.receive_json_from(timeout=5))["frame_index"] for _ in range(2)]
    assert received == [70, 71]
    # Nothing is left queued: the next message goes straight through again.
    await layer.group_send(group, score_message(72))
    assert (await ws.receive_json_from(timeout=5))["frame_index"] == 72
    await ws.disconnect()


async def test_it_keeps_relaying_to_the_others_when_relaying_to_one_socket_fails(
    scored, monkeypatch
):
    analysis = scored["analysis"]
    sockets = [(await connect(analysis.pk, scored["viewer"]))[0] for _ in range(2)]
    for ws in sockets:
        await ws.receive_json_from(timeout=5)
    relay = consumers.AnalysisConsumer._relay
    broken = []

    async def fails_for_one(self, kind, event):
        if not broken:
            broken.append(self)  # the first socket the hub relays to
        if self is broken[0]:
            raise RuntimeError("a bug in relaying")
        await relay(self, kind, event)

    monkeypatch.setattr(consumers.AnalysisConsumer, "_relay", fails_for_one)
    layer = get_channel_layer()
    for index in (70, 71):
        await layer.group_send(group_name(analysis.pk), score_message(index))
    # The failing socket ends as it did when its own task relayed: the error is raised there.
    for _ in range(50):
        ended = [ws for ws in sockets if ws.future.done()]
        if ended:
            break
        await asyncio.sleep(0.1)
    (failed,) = ended
    with pytest.raises(RuntimeError, match="a bug in relaying"):
        failed.future.result()
    (healthy,) = [ws for ws in sockets if ws is not failed]
    assert [(await healthy.receive_json_from(timeout=5))["frame_index"] for _ in "ab"] == [70, 71]
    (hub,) = consumers._Hub.hubs[asyncio.get_running_loop()].values()
    assert broken[0] not in hub.members  # nothing more is relayed to the dead socket
    await healthy.disconnect()


async def test_it_leaves_the_group_when_the_last_socket_ends_on_an_error(scored, monkeypatch):
    analysis = scored["analysis"]
    ws, _ = await connect(analysis.pk, scored["viewer"])
    await ws.receive_json_from(timeout=5)

    relay = consumers.AnalysisConsumer._relay

    async def fails(self, kind, event):
        raise RuntimeError("a bug in relaying")

    monkeypatch.setattr(consumers.AnalysisConsumer, "_relay", fails)
    layer = get_channel_layer()
    group = group_name(analysis.pk)
    assert len(layer.groups[group]) == 1
    await layer.group_send(group, score_message(70))
    with pytest.raises(RuntimeError, match="a bug in relaying"):
        await ws.wait(timeout=5)
    # Without a disconnect the process used to stay in the group for nobody, receiving every
    # score of the analysis until it restarted.
    for _ in range(50):
        if not layer.groups.get(group):
            break
        await asyncio.sleep(0.1)
    assert not layer.groups.get(group)
    assert not consumers._Hub.hubs.get(asyncio.get_running_loop())

    # The next page subscribes afresh and is relayed to.
    monkeypatch.setattr(consumers.AnalysisConsumer, "_relay", relay)
    again, _ = await connect(analysis.pk, scored["viewer"])
    await again.receive_json_from(timeout=5)
    assert len(layer.groups[group]) == 1
    await layer.group_send(group, score_message(71))
    assert (await again.receive_json_from(timeout=5))["frame_index"] == 71
    await again.disconnect()
