"""One logged-in socket that asks for far more than it reads, against a real daphne; and
the page's own script (static/js/live.js) still in step under the request limits.

ASGI has no back-pressure: daphne buffers whatever the application sends to a socket whose
client does not read (Twisted's write buffer grows without limit), until its ping timeout
(`--ping-interval` 20 s + `--ping-timeout` 30 s by default) drops the connection. Before
the rate limit in detection/live/consumers.py, 2,000 resync requests answered with 3,000 scores
each grew daphne from 126 MB to 827 MB. The bound asserted here, 50 MiB of growth, is the
consumer's worst case for one socket (its snapshot budget, 4 MiB, plus what the budget's
refill allows over daphne's 50-s ping horizon, ~3 MiB, plus one reply and its transient
copies, ~3 MiB) with room for the allocator: far under what the unbounded path reaches
after a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from contextlib import suppress

import pytest
import websockets

from detection.live.consumers import MAX_RESYNC
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, FrameScoreFactory, UserFactory
from tests.support.live import NodePage, full_resync_analysis, node_websocket_ok
from tests.support.processes import cpu_seconds, migrate_channels, rss_kib, start_daphne, stop, tail
from tests.support.sessions import session_cookie
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import WaitTimeout, wait_until, wait_until_async

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.slow,
]

REQUESTS = 2_000
GROWTH_LIMIT_MIB = 50
RESYNC = json.dumps({"type": "resync", "after": -1})


async def until_idle(pid: int, limit_s: float = 90.0) -> None:
    """Until daphne has used under 50 ms of CPU in a second: it handled what it was sent.

    At most `limit_s`: the measurement goes on either way.
    """
    last = cpu_seconds(pid)

    def idle() -> bool:
        nonlocal last
        before, last = last, cpu_seconds(pid)
        return last - before < 0.05

    await asyncio.sleep(1.0)
    with suppress(WaitTimeout):
        await wait_until_async(idle, limit_s - 1.0, "daphne to go idle", every=1.0)


async def flood(url: str, origin: str, cookie: str, pid: int) -> tuple[dict, dict, int, int]:
    """Read one resync, then send REQUESTS more without reading; then read what came.

    Returns daphne's memory before and after the flood, the replies that reached the client
    and the close code it saw.
    """
    async with websockets.connect(
        url,
        additional_headers={"Cookie": cookie},
        origin=origin,
        open_timeout=10,
        max_size=None,
        max_queue=1,  # the client library stops reading the TCP socket after one message
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        # Warm up: the first full reply (imports, the database connection, allocator arenas)
        # belongs to the baseline.
        await ws.send(RESYNC)
        assert len(json.loads(await ws.recv())["scores"]) == MAX_RESYNC
        await until_idle(pid)
        before = rss_kib(pid)
        for _ in range(REQUESTS):
            await ws.send(RESYNC)
        await until_idle(pid)
        after = rss_kib(pid)
        replies = 0
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout=60)
                replies += 1
        except websockets.ConnectionClosed:
            return before, after, replies, ws.close_code or 0


def test_it_keeps_daphne_memory_bounded_when_a_socket_floods_resyncs_without_reading(
    tmp_path, subprocess_env
):
    viewer = UserFactory(username="flooder")
    analysis_id = full_resync_analysis(viewer)
    cookie = session_cookie(viewer)
    port = free_port()
    log = tmp_path / "daphne.log"
    server = start_daphne(subprocess_env, port, log)
    try:
        wait_for_port(port)
        before, after, replies, code = asyncio.run(
            flood(
                f"ws://127.0.0.1:{port}/ws/analyses/{analysis_id}/",
                f"http://127.0.0.1:{port}",
                cookie,
                server.pid,
            )
        )
        assert server.poll() is None, tail(log)
    finally:
        stop(server)
    grown = {k: (after[k] - before[k]) / 1024 for k in before}
    print(
        f"\ndaphne over {REQUESTS} unread resyncs of {MAX_RESYNC} scores: VmRSS "
        f"{before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB, VmHWM "
        f"{before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MiB; {replies} replies "
        f"reached the client, closed with {code}"
    )
    assert grown["VmRSS"] < GROWTH_LIMIT_MIB and grown["VmHWM"] < GROWTH_LIMIT_MIB, grown
    # Closed as abusive (4429), or dropped by daphne once its close handshake timed out
    # behind the unread replies (1006); logged with the user and the peer either way.
    assert code in (4429, 1006), code
    warnings = [line for line in log.read_text().splitlines() if "too many" in line]
    assert len(warnings) == 1 and "'flooder'" in warnings[0] and "127.0.0.1:" in warnings[0]


# --- the page's script under the limits ------------------------------------------------------

# Run by `manage.py shell` on the embedded layer (the test process has the in-memory one):
# four times, store five scores and publish only the last, so the page sees a gap each time.
PUBLISH_WITH_GAPS = """
import time
from detection.live.publisher import ChannelPublisher
from detection.models import FrameScore
publisher = ChannelPublisher()
for end in (75, 80, 85, 90):
    FrameScore.objects.bulk_create(
        FrameScore(analysis_id={analysis_id}, frame_index=i, time_s=i / 2, score=i / 100,
                   normal_similarity=0.1, anomaly_similarity=0.2)
        for i in range(end - 5, end)
    )
    last = end - 1
    publisher.publish({analysis_id}, "score", {{"frame_index": last, "time_s": last / 2,
        "captured_at": None, "score": last / 100, "normal": 0.1, "anomaly": 0.2,
        "previous": last - 1}})
    time.sleep(1.0)
"""


@pytest.mark.skipif(not node_websocket_ok(), reason="node >= 20 with WebSocket not found")
def test_it_keeps_the_live_page_script_in_step_through_resyncs(tmp_path, subprocess_env):
    viewer = UserFactory(username="watcher")
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]), window_size=60)
    for i in range(70):
        FrameScoreFactory(analysis=analysis, frame_index=i, time_s=i / 2, score=i / 100)
    env = {
        **subprocess_env,
        "CHANNELS_LAYER": "sqlite",
        "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3"),
    }
    migrate_channels(env)
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    page = None
    try:
        wait_for_port(port)
        page = NodePage(
            tmp_path,
            f"http://127.0.0.1:{port}",
            f"/ws/analyses/{analysis.pk}/",
            session_cookie(viewer),
        )
        wait_until(lambda: len(page.series()) == 60, 20, "the first snapshot", every=0.1)
        code = PUBLISH_WITH_GAPS.format(analysis_id=analysis.pk)
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        wait_until(lambda: len(page.series()) == 80, 20, "every stored score", every=0.1)
        held = page.finish()
    finally:
        if page is not None:
            page.stop()
        stop(server)
    # One resync per gap, each answered with exactly what was missed; never refused.
    assert held == [(i, pytest.approx(i / 100)) for i in range(10, 90)]
    assert page.resyncs() == 4
    assert set(page.states()) == {"connecting", "live"}, page.states()
