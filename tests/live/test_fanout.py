"""One subscription per process and analysis (detection/live/consumers.py, `_Hub`): the
worker's message reaches the process once, every local socket of the analysis relays it."""

from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from redis.exceptions import ConnectionError as RedisConnectionError

from detection.live import consumers
from detection.live.publisher import group_name
from tests.live.test_consumers import closed_with, connect
from tests.support.factories import AnalysisFactory, CameraFactory

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
