"""Live updates under faults, with real processes: daphne, `run_detector`, the channel layer.

Overflow (issue 7, item 7): the worker publishes far more than the layer holds for a web
server that cannot keep up. A browser that stops reading would not do: daphne (Twisted)
buffers what it writes to a socket without back-pressure, so the consumer never falls
behind the layer. What falls behind is the web server process itself, so the test stops
daphne (SIGSTOP) while the worker scores a paced live stream (5 scores a second, so no
phase races the machine's speed), with a small `CHANNELS_CAPACITY`: the layer
really drops messages, the page sees a score whose `previous` it does not hold, asks for
a resync, and ends holding exactly the stored scores. Through the embedded SQLite layer
and through Redis (TEST_REDIS_URL).

Redis outage (item 8): a private `redis-server` on a free port is killed (SIGKILL) under a
running worker and restarted on the same port, empty. The worker keeps storing while it is
down, daphne closes the sockets (CLOSE_UNAVAILABLE) so the page reconnects with `?after=`,
live scores flow again after the restart, and the page ends with every stored score, once.

Two clients watch each run: `PageClient` (Python, `websockets`, the page's rules restated
so the test can observe each step) and, where Node (>= 20) is installed, the page's own
static/js/live.js under Node (a small `window` shim around Node's WebSocket), held to the
same end state.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator

from detection.live import consumers
from detection.live.consumers import CLOSE_UNAVAILABLE
from detection.live.publisher import ChannelPublisher, group_name
from detection.models import Analysis, FrameScore
from portal.asgi import application
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, FrameScoreFactory, UserFactory
from tests.support.live import NodePage, node_websocket_ok
from tests.support.processes import migrate_channels, start_daphne, stop
from tests.support.services import NO_REDIS_SERVER, NO_REDIS_URL, REDIS_SERVER, REDIS_URL
from tests.support.sessions import session_cookie
from tests.support.streams import MJPEGServer, StalledServer, free_port, wait_for_port
from tests.support.waiting import wait_until_async

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tiny_settings")]

# A database of its own on that server: group names (`analysis-<pk>`) repeat across test
# databases, and another test's daphne must not relay this test's scores, or the reverse.
OWN_REDIS_DB = 11
CAPACITY = 10  # CHANNELS_CAPACITY for the overflow runs
WORKER_ARGS = ("--once", "--poll", "0.2", "--batch-size", "4")


# --- waiting and processes ---------------------------------------------------------------


@pytest.fixture
def env(subprocess_env: dict[str, str], monkeypatch) -> dict[str, str]:
    """The subprocesses' environment; then ORM calls allowed in the test's event loop.

    The scenarios count stored rows from their event loop (the main thread; quick queries).
    The subprocesses' environment is copied before the permission is set, so daphne and the
    worker still refuse synchronous ORM calls in async code.
    """
    env = dict(subprocess_env)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    return env


def stored(analysis_id: int) -> list[tuple[int, float]]:
    return list(
        FrameScore.objects.filter(analysis_id=analysis_id)
        .order_by("frame_index")
        .values_list("frame_index", "score")
    )


def stored_count(analysis_id: int) -> int:
    return FrameScore.objects.filter(analysis_id=analysis_id).count()


class RedisServer:
    """A private, memory-only redis-server that the test can kill and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            ],
            stdout=(self.folder / "redis.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=15)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no goodbye to any client
        self.process.wait(timeout=10)

    def stop(self) -> None:
        stop(self.process)


@contextmanager
def private_redis_layer(tmp_path: Path, settings) -> Iterator[RedisServer]:
    """A private redis-server, and this process's channel layer on it, for the block."""
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [redis.url]},
            }
        }
        yield redis
    finally:
        redis.stop()


# --- clients -------------------------------------------------------------------------------


@dataclass
class PageClient:
    """The live page's socket rules (static/js/live.js), observable step by step.

    Holds `series` as the chart does; reconnects with the page's backoff and `?after=`;
    resyncs when a score's `previous` is newer than the last index it holds.
    """

    url: str
    cookie: str
    origin: str
    series: list[tuple[int, float]] = field(default_factory=list)
    last: int | None = None
    resyncing: bool = False
    gaps: int = 0  # resync requests sent because a score showed a gap
    restarts: int = 0  # series dropped and started again (must not happen here)
    snapshots: int = 0
    live: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, index)
    closes: list[tuple[float, int | None]] = field(default_factory=list)  # (time, code)
    stopping: bool = False
    _fresh: bool = False  # a snapshot arrived on the current connection

    def indexes(self) -> list[int]:
        return [i for i, _ in self.series]

    def describe(self) -> str:
        held = self.indexes()
        return (
            f"The page holds {len(held)} scores ({held[:3]}..{held[-3:]}); last {self.last}, "
            f"resyncing {self.resyncing}, {self.gaps} gaps, {self.snapshots} snapshots, "
            f"{len(self.live)} live, {self.restarts} restarts, closes {self.closes[-5:]}."
        )

    def live_since(self, moment: float) -> list[float]:
        return [t for t, _ in self.live if t > moment]

    async def run(self) -> None:
        attempt = 0
        while not self.stopping:
            url = self.url if self.last is None else f"{self.url}?after={self.last}"
            self._fresh = False
            code = None
            try:
                async with websockets.connect(
                    url,
                    additional_headers={"Cookie": self.cookie},
                    origin=self.origin,
                    open_timeout=10,
                ) as ws:
                    self.resyncing = False
                    async for raw in ws:
                        if self.handle(json.loads(raw)) == "resync":
                            await ws.send(json.dumps({"type": "resync", "after": self.last}))
                    code = ws.close_code
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
            except (OSError, websockets.InvalidHandshake, TimeoutError):
                pass  # nothing listens (yet): back off, as the page does
            self.closes.append((time.monotonic(), code))
            # live.js: the attempt counter starts again with every snapshot; the delay is
            # half fixed, half random, doubling up to 15 s.
            attempt = 0 if self._fresh else attempt
            cap = min(15.0, 0.5 * 2 ** min(attempt, 10))
            attempt += 1
            await asyncio.sleep(cap / 2 + random.random() * cap / 2)

    def handle(self, msg: dict[str, Any]) -> str | None:
        if msg["type"] == "snapshot":
            self.snapshots += 1
            self._fresh = True
            self.resyncing = False
            append = bool(msg["resync"]) and not msg["truncated"] and self.last is not None
            scores = [(s["frame_index"], s["score"]) for s in msg["scores"]]
            if append:
                scores = [s for s in scores if s[0] > self.last]
            else:
                self.series.clear()
            if scores:
                self.last = scores[-1][0]
            elif not append:
                self.last = None
            self.series.extend(scores)
            return None
        if msg["type"] != "score" or self.resyncing:
            return None
        index, previous = msg["frame_index"], msg.get("previous")
        if self.last is not None:  # the same checks, in the same order, as live.js
            if previous is None:
                return self.restart()
            if index <= self.last:
                return None  # already held: it came with a snapshot
            if previous > self.last:
                self.gaps += 1
                self.resyncing = True
                return "resync"
            if previous < self.last:
                return self.restart()
        self.last = index
        self.series.append((index, msg["score"]))
        self.live.append((time.monotonic(), index))
        return None

    def restart(self) -> None:
        # The series went backwards (a re-run): live.js drops it and reconnects for a fresh
        # snapshot. Counted, never expected in these runs.
        self.restarts += 1
        self.series.clear()
        self.last = None


# --- the stack -----------------------------------------------------------------------------


@dataclass
class Site:
    """daphne on a free port with one signed-in viewer; the worker once started."""

    env: dict[str, str]
    folder: Path
    port: int
    viewer: Any
    cookie: str
    daphne: subprocess.Popen
    use_node: bool
    worker: subprocess.Popen | None = None
    nodes: list[NodePage] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, analysis: Analysis) -> PageClient:
        url = f"ws://127.0.0.1:{self.port}/ws/analyses/{analysis.pk}/"
        return PageClient(url, self.cookie, self.base)

    def node_page(self, analysis: Analysis) -> NodePage | None:
        if not self.use_node:
            return None
        page = NodePage(self.folder, self.base, f"/ws/analyses/{analysis.pk}/", self.cookie)
        self.nodes.append(page)
        return page

    def start_worker(self, *args: str) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_detector", *args],
            env=self.env,
            cwd=ROOT,
            stdout=(self.folder / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
        )

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


@contextmanager
def served(tmp_path: Path, base_env: dict[str, str], layer_env: dict[str, str]) -> Iterator[Site]:
    env = {**base_env, **layer_env}
    migrate_channels(env)
    use_node = node_websocket_ok()
    if not use_node:
        warnings.warn(
            "node >= 20 with WebSocket not found: static/js/live.js is not exercised",
            stacklevel=3,
        )
    viewer = UserFactory(username="watcher")
    port = free_port()
    daphne = start_daphne(env, port, tmp_path / "daphne.log")
    site = Site(env, tmp_path, port, viewer, session_cookie(viewer), daphne, use_node)
    try:
        wait_for_port(port)
        yield site
    finally:
        stop(site.worker, timeout=60)
        for node in site.nodes:
            node.stop()
        stop(daphne)


def file_analysis(site: Site, make_video, frames: int) -> Analysis:
    # 5 scores per second of video; small frames: decoding is not what is tested here.
    clip = make_video("clip.avi", frames=frames, fps=10.0, size=(160, 120))
    camera = CameraFactory(kind="file", source=str(clip), viewers=[site.viewer])
    return AnalysisFactory(camera=camera, status="queued", sampling_fps=5.0)


@asynccontextmanager
async def watching(*pages: PageClient, nodes: tuple[NodePage | None, ...] = ()):
    """The Python page clients run (and the Node ones are live) inside the block."""
    tasks = [asyncio.create_task(page.run()) for page in pages]
    try:
        await wait_until_async(
            lambda: all(p.snapshots for p in pages), 15, "the pages' first snapshots"
        )
        for node in filter(None, nodes):
            await wait_until_async(lambda n=node: "live" in n.states(), 15, "live.js to be live")
        yield
    finally:
        for page in pages:
            page.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def holds_everything(
    page: PageClient, analysis: Analysis, node: NodePage | None = None
) -> list[tuple[int, float]]:
    """Wait until the page (and live.js) hold every stored score, once nothing more is stored.

    Each page catches up on its own clock: a score the layer dropped at the very end is
    only announced by the socket's periodic re-check (up to two RECHECK_SECONDS), so every
    client is waited for, not checked the moment another one caught up.
    """
    rows = stored(analysis.pk)
    indexes = [i for i, _ in rows]
    await wait_until_async(
        lambda: page.indexes() == indexes,
        45,
        f"the page of analysis {analysis.pk} to hold every stored score",
        lambda: f"{len(rows)} stored. {page.describe()}",
    )
    if node is not None:
        await wait_until_async(
            lambda: [i for i, _ in node.series()] == indexes,
            45,
            f"live.js on analysis {analysis.pk} to hold every stored score",
            lambda: f"{len(rows)} stored; live.js holds {len(node.series())}.",
        )
    return rows


async def worker_exits(site: Site, timeout: float = 120) -> None:
    assert site.worker is not None
    await wait_until_async(lambda: site.worker.poll() is not None, timeout, "the worker to exit")
    assert site.worker.returncode == 0, site.log("worker")[-3000:]


def assert_holds_exactly(series: list[tuple[int, float]], rows: list[tuple[int, float]]) -> None:
    indexes = [i for i, _ in series]
    assert len(indexes) == len(set(indexes)), "the page holds some scores twice"
    assert indexes == [i for i, _ in rows]
    assert [s for _, s in series] == pytest.approx([s for _, s in rows])


# --- overflow ------------------------------------------------------------------------------


def overflow(tmp_path, env, layer_env: dict[str, str]) -> None:
    """The worker scores a paced live stream: 5 scores a second, whatever the machine's speed.

    A file analysis would be scored as fast as the worker can: with a capacity of 10 the
    layer could overflow before daphne is stopped (the page then gets its scores by resync,
    never "live"), or the run could end before the stop. A stream makes each phase a
    matter of waiting, not of racing.
    """
    layer_env = {**layer_env, "CHANNELS_CAPACITY": str(CAPACITY)}
    with served(tmp_path, env, layer_env) as site, MJPEGServer(fps=10) as camera_server:
        analysis = AnalysisFactory(
            camera=CameraFactory(kind="stream", source=camera_server.url, viewers=[site.viewer]),
            status="queued",
            sampling_fps=5.0,
            motion_gating=False,
        )
        page, node = site.page(analysis), site.node_page(analysis)
        count = lambda: stored_count(analysis.pk)  # noqa: E731
        figures: dict[str, float] = {}

        async def scenario() -> list[tuple[int, float]]:
            async with watching(page, nodes=(node,)):
                site.start_worker(*WORKER_ARGS[1:])  # not --once: it serves the stream
                await wait_until_async(lambda: len(page.live) >= 10, 90, "10 live scores")
                # The web server stops reading the layer while the worker goes on publishing
                # (every score, and a status or progress message per stored batch).
                os.kill(site.daphne.pid, signal.SIGSTOP)
                try:
                    start = count()
                    await wait_until_async(
                        lambda: count() >= start + 4 * CAPACITY,
                        60,
                        f"{4 * CAPACITY} scores stored with daphne stopped",
                    )
                    figures["stored while stopped"] = count() - start
                finally:
                    os.kill(site.daphne.pid, signal.SIGCONT)
                resumed = time.monotonic()
                await wait_until_async(
                    lambda: page.gaps >= 1, 45, "the page to notice the gap", page.describe
                )
                await wait_until_async(
                    lambda: len(page.live_since(resumed)) >= 5,
                    30,
                    "5 live scores after the stop",
                    page.describe,
                )
                assert site.worker is not None
                site.worker.send_signal(signal.SIGTERM)  # finishes its batch, then exits
                await worker_exits(site, timeout=60)
                return await holds_everything(page, analysis, node)

        rows = asyncio.run(scenario())
        assert_holds_exactly(page.series, rows)
        assert [i for i, _ in rows] == list(range(len(rows)))  # nothing skipped meanwhile
        # Proof that the layer dropped messages: the page saw gaps and fewer scores arrived
        # live than were stored; the rest came from the snapshots it asked for.
        assert page.gaps >= 1 and page.restarts == 0
        assert len(page.live) < len(rows)
        if node is not None:
            assert node.resyncs() >= 1, "live.js never asked for a resync"
            assert_holds_exactly(node.finish(), rows)
        print(
            f"\noverflow ({layer_env['CHANNELS_LAYER']}, capacity {CAPACITY}): "
            f"{len(rows)} scores stored, {figures['stored while stopped']:.0f} while daphne was "
            f"stopped; {len(page.live)} arrived live, the rest by {page.gaps} resync(s)"
            + (f"; live.js resynced {node.resyncs()} times" if node else "")
        )


@pytest.mark.slow
def test_it_resyncs_a_page_after_the_embedded_layer_overflows(tmp_path, env):
    overflow(
        tmp_path,
        env,
        {"CHANNELS_LAYER": "sqlite", "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3")},
    )


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason=NO_REDIS_URL)
def test_it_resyncs_a_page_after_the_redis_layer_overflows(tmp_path, env):
    assert REDIS_URL
    url = urlsplit(REDIS_URL)._replace(path=f"/{OWN_REDIS_DB}").geturl()
    # daphne is stopped for as long as 40 scores take to store (8 s, more on a loaded
    # machine). Past the Redis read timeout its pending read fails on SIGCONT and the socket
    # closes with 4503: the page then catches up by reconnecting, and the gap this test is
    # about is never seen (a failure seen in CI). The timeout is made longer than any stop.
    layer = {"CHANNELS_LAYER": "redis", "REDIS_URL": url, "REDIS_SOCKET_TIMEOUT": "300"}
    overflow(tmp_path, env, layer)


# --- Redis outage --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason=NO_REDIS_URL)
@pytest.mark.skipif(not REDIS_SERVER, reason=NO_REDIS_SERVER)
def test_it_keeps_scoring_through_a_redis_outage_and_pages_catch_up(tmp_path, make_video, env):
    """A file analysis (it completes) and a live stream (it paces the run) on one worker.

    The stream's 5 scores a second make the phases independent of the machine's speed: a
    file is scored as fast as the worker can, and much faster while it does not publish.
    """
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        layer_env = {"CHANNELS_LAYER": "redis", "REDIS_URL": redis.url}
        with served(tmp_path, env, layer_env) as site, MJPEGServer(fps=10) as camera_server:
            clip = file_analysis(site, make_video, frames=300)
            stream = AnalysisFactory(
                camera=CameraFactory(
                    kind="stream", source=camera_server.url, viewers=[site.viewer]
                ),
                status="queued",
                sampling_fps=5.0,
                motion_gating=False,
            )
            page, clip_page = site.page(stream), site.page(clip)
            node = site.node_page(stream)
            count = lambda: stored_count(stream.pk)  # noqa: E731
            figures: dict[str, float] = {}

            async def scenario() -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
                async with watching(page, clip_page, nodes=(node,)):
                    site.start_worker(*WORKER_ARGS[1:])  # not --once: it serves the stream
                    await wait_until_async(lambda: len(page.live) >= 10, 90, "10 live scores")

                    redis.kill()
                    killed, at_kill = time.monotonic(), count()
                    closes = len(page.closes)
                    # daphne closes the socket: the page does not sit on a dead subscription.
                    await wait_until_async(
                        lambda: len(page.closes) > closes, 15, "daphne to close the socket"
                    )
                    figures["closed after"] = page.closes[closes][0] - killed
                    assert page.closes[closes][1] == CLOSE_UNAVAILABLE
                    # The worker keeps storing while Redis is down (long enough for the
                    # worker's and the page's backoffs to grow past their first steps).
                    await wait_until_async(
                        lambda: count() >= at_kill + 10 and time.monotonic() > killed + 3,
                        60,
                        "10 scores stored with Redis down for 3 s",
                    )
                    assert site.worker is not None and site.worker.poll() is None
                    figures["stored while down"] = count() - at_kill
                    figures["down for"] = time.monotonic() - killed

                    redis.start()  # the same port, empty: no groups, no messages
                    back = time.monotonic()
                    await wait_until_async(
                        lambda: page.live_since(back), 45, "live scores after the restart"
                    )
                    figures["live again after"] = page.live_since(back)[0] - back
                    await wait_until_async(
                        lambda: len(page.live_since(back)) >= 5, 30, "5 more live scores"
                    )

                    await wait_until_async(
                        lambda: Analysis.objects.filter(pk=clip.pk, status="completed").exists(),
                        90,
                        "the file analysis to complete",
                    )
                    assert site.worker is not None
                    site.worker.send_signal(signal.SIGTERM)  # finishes its batch, then exits
                    await worker_exits(site, timeout=60)
                    return (
                        await holds_everything(page, stream, node),
                        await holds_everything(clip_page, clip),
                    )

            rows, clip_rows = asyncio.run(scenario())
            assert_holds_exactly(page.series, rows)
            assert_holds_exactly(clip_page.series, clip_rows)
            assert page.restarts == clip_page.restarts == 0
            assert [i for i, _ in rows] == list(range(len(rows)))  # nothing skipped meanwhile
            if node is not None:
                assert "reconnecting" in node.states()
                assert_holds_exactly(node.finish(), rows)
            worker_log, daphne_log = site.log("worker"), site.log("daphne")
            assert "publishing to live pages failed" in worker_log
            assert "publishing to live pages resumed" in worker_log
            # daphne closed the sockets itself, a line each, not a traceback each.
            assert "unavailable (ConnectionError)" in daphne_log
            assert "Exception inside application" not in daphne_log
            print(
                f"\nredis outage: {figures['stored while down']:.0f} scores stored in "
                f"{figures['down for']:.1f} s without Redis; socket closed "
                f"{figures['closed after'] * 1000:.0f} ms after the kill; live scores again "
                f"{figures['live again after']:.1f} s after the restart; the page reconnected "
                f"{len(page.closes) - 1} times; {len(rows)} stream and {len(clip_rows)} file "
                "scores held exactly"
            )
    finally:
        redis.stop()


# --- the same rules, in process: the publisher and the socket -----------------------------


@pytest.mark.slow  # waits out the publisher's timeout twice
def test_it_never_waits_for_a_hung_redis_and_drops_until_a_retry(settings, caplog):
    # A Redis that accepts connections and never answers (stopped, or a black hole).
    with StalledServer() as hung:
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [f"redis://127.0.0.1:{hung.port}/0"]},
            }
        }
        publisher = ChannelPublisher()
        calls: list[float] = []

        def publish(index: int) -> None:
            started = time.monotonic()
            publisher.publish(1, "score", {"frame_index": index})
            calls.append(time.monotonic() - started)

        with caplog.at_level("WARNING", logger="detection.live.publisher"):
            for i in range(101):  # the first send hangs; the rest wait behind it
                publish(i)
            started = time.monotonic()
            assert publisher.flush(ChannelPublisher.TIMEOUT + 5)
            first = time.monotonic() - started
            time.sleep(ChannelPublisher.RETRY_AFTER)
            publish(101)  # tried again (in the sending task), times out again
            started = time.monotonic()
            assert publisher.flush(ChannelPublisher.TIMEOUT + 5)
            second = time.monotonic() - started
    # The worker's thread never waited for Redis: each publish only queued its message.
    assert max(calls) < 0.25, max(calls)
    # One attempt timed out, then the 100 messages behind it were dropped without trying
    # (not 101 timeouts); after the pause, one more attempt.
    assert 0.8 * ChannelPublisher.TIMEOUT <= first < ChannelPublisher.TIMEOUT + 2
    assert 0.8 * ChannelPublisher.TIMEOUT <= second < ChannelPublisher.TIMEOUT + 2
    assert publisher._dropped == 102
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1, failures  # rate-limited: one line, not one per score
    assert "retrying in 0.5 s" in failures[0] and "TimeoutError" in failures[0]


def test_it_drops_what_exceeds_its_queue_and_says_so_when_it_resumes(monkeypatch, caplog):
    publisher = ChannelPublisher()
    publisher.MAX_QUEUED = 5
    gate = threading.Event()
    send = ChannelPublisher._send

    async def slow(self, layer, group, message):
        await asyncio.get_running_loop().run_in_executor(None, gate.wait, 5)
        await send(self, layer, group, message)

    monkeypatch.setattr(ChannelPublisher, "_send", slow)
    monkeypatch.setattr("detection.live.publisher._own_loop_fits", lambda layer: True)
    for i in range(20):
        publisher.publish(1, "score", {"frame_index": i})
    gate.set()
    assert publisher.flush(5)
    # At most MAX_QUEUED wait (the one being sent left the queue): the rest were dropped.
    assert 20 - 1 - publisher.MAX_QUEUED <= publisher._dropped <= 20 - publisher.MAX_QUEUED


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.skipif(not REDIS_SERVER, reason=NO_REDIS_SERVER)
def test_it_publishes_from_plain_sync_code_over_one_redis_connection(tmp_path, settings):
    # What the worker does: publish from its main thread, no event loop of its own.
    with private_redis_layer(tmp_path, settings) as redis:
        layer = get_channel_layer()
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group_name(7), channel)
        publisher = ChannelPublisher()
        started = time.monotonic()
        for i in range(100):
            publisher.publish(7, "score", {"frame_index": i})
        per_message = (time.monotonic() - started) / 100
        assert publisher.flush(10)
        stats = subprocess.run(
            ["redis-cli", "-p", str(redis.port), "INFO", "stats"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        connections = int(stats.split("total_connections_received:")[1].split()[0])
        received = [async_to_sync(layer.receive)(channel)["frame_index"] for _ in range(100)]
    assert received == list(range(100))
    # One connection for the publisher's loop (and one per `async_to_sync` call above and
    # for redis-cli), not one per message.
    assert connections <= 10, connections
    print(f"\npublishing from sync code: {per_message * 1000:.2f} ms per message")


def test_it_says_when_publishing_resumes_and_what_was_dropped(monkeypatch, caplog):
    publisher = ChannelPublisher()
    publisher.RETRY_AFTER = publisher.MAX_RETRY_AFTER = 0.05
    outage = {"on": True}
    send = ChannelPublisher._send

    async def flaky(self, layer, group, message):
        if outage["on"]:
            raise ConnectionError("Connection refused")
        await send(self, layer, group, message)

    monkeypatch.setattr(ChannelPublisher, "_send", flaky)
    with caplog.at_level("WARNING", logger="detection.live.publisher"):
        for i in range(3):
            publisher.publish(1, "score", {"frame_index": i})  # 1 failure, 2 dropped
        assert publisher.flush(5)
        time.sleep(0.06)
        outage["on"] = False
        publisher.publish(1, "score", {"frame_index": 3})
        publisher.publish(1, "score", {"frame_index": 4})
        assert publisher.flush(5)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "failed" in messages[0] and "Connection refused" in messages[0]
    assert "resumed after" in messages[1] and "3 messages were not published" in messages[1]


@pytest.fixture
def watched(viewer):
    camera = CameraFactory(viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="running", window_size=60)
    for i in range(10):
        FrameScoreFactory(analysis=analysis, frame_index=i, time_s=i / 2, score=i / 100)
    Analysis.objects.filter(pk=analysis.pk).update(last_frame_index=9)
    return analysis, session_cookie(viewer).encode()


async def open_socket(analysis: Analysis, cookie: bytes) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost"), (b"cookie", cookie)]
    ws = WebsocketCommunicator(application, f"/ws/analyses/{analysis.pk}/", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot" and snapshot["scores"][-1]["frame_index"] == 9
    return ws


async def test_it_closes_for_a_retry_when_the_layer_fails_under_the_socket(
    watched, monkeypatch, caplog
):
    from redis.exceptions import ConnectionError as RedisConnectionError

    failing = asyncio.Event()
    receive = InMemoryChannelLayer.receive

    async def receive_until_redis_dies(self, channel):
        task = asyncio.ensure_future(receive(self, channel))
        dead = asyncio.ensure_future(failing.wait())
        await asyncio.wait([task, dead], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            dead.cancel()
            return task.result()
        task.cancel()
        raise RedisConnectionError("Connection closed by server.")

    monkeypatch.setattr(InMemoryChannelLayer, "receive", receive_until_redis_dies)
    ws = await open_socket(*watched)
    with caplog.at_level("WARNING", logger="detection.live.consumers"):
        failing.set()
        closed = await ws.receive_output(timeout=5)
    # A close the page retries (not 1011 after a traceback from daphne, not 4403/4404).
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}
    assert any("unavailable (ConnectionError)" in r.getMessage() for r in caplog.records)
    await ws.wait()


async def test_it_closes_for_a_retry_when_rejoining_fails(watched, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.1)
    ws = await open_socket(*watched)

    async def group_add(self, group, channel):
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    monkeypatch.setattr(InMemoryChannelLayer, "group_add", group_add)
    closed = await ws.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": CLOSE_UNAVAILABLE}
    await ws.disconnect()


async def test_it_rejoins_its_group_after_the_layer_forgot_it(watched, monkeypatch):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.1)
    analysis, cookie = watched
    ws = await open_socket(analysis, cookie)
    layer = get_channel_layer()
    layer.groups.clear()  # what a restarted Redis (or channels_redis's group expiry) does
    group = group_name(analysis.pk)
    await wait_until_async(lambda: layer.groups.get(group), 5, "the socket to rejoin its group")
    await layer.group_send(group, {"type": "analysis.status", "status": "running"})
    assert await ws.receive_json_from(timeout=5) == {"type": "status", "status": "running"}
    await ws.disconnect()


async def test_it_announces_what_was_stored_but_never_relayed(watched, monkeypatch):
    # The tail of a run whose messages the layer dropped: no later score reveals the gap.
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.1)
    analysis, cookie = watched
    ws = await open_socket(analysis, cookie)

    def finish_silently() -> None:
        for i in range(10, 15):
            FrameScoreFactory(analysis=analysis, frame_index=i, time_s=i / 2, score=i / 100)
        Analysis.objects.filter(pk=analysis.pk).update(last_frame_index=14, status="completed")

    await sync_to_async(finish_silently)()
    nudge = await ws.receive_json_from(timeout=5)
    assert nudge["type"] == "score"
    assert (nudge["frame_index"], nudge["previous"], nudge["score"]) == (14, 13, 0.14)
    assert await ws.receive_json_from(timeout=5) == {"type": "status", "status": "completed"}
    # The page, holding 9, sees `previous` 13 and asks for the rest: exactly 10..14.
    await ws.send_json_to({"type": "resync", "after": 9})
    resync = await ws.receive_json_from(timeout=5)
    assert [s["frame_index"] for s in resync["scores"]] == [10, 11, 12, 13, 14]
    # Said once: nothing more while nothing new is stored.
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()


PAGES = 20


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.skipif(not REDIS_SERVER, reason=NO_REDIS_SERVER)
def test_it_logs_no_error_when_pages_close_as_scores_arrive(tmp_path, env, settings):
    # Viewers leave all the time. A page's close frame closes its socket at once, but daphne
    # tells the consumer only once the connection is gone, after what it still had to write
    # was written: a score relayed in between raised autobahn's "Attempt to send on a closed
    # protocol", logged by daphne as an ERROR with a traceback (dozens a minute with many
    # viewers on a busy server). Here pages stop reading while large scores pile up for
    # them, so that stretch lasts, then close.
    with private_redis_layer(tmp_path, settings) as redis:
        layer_env = {"CHANNELS_LAYER": "redis", "REDIS_URL": redis.url}
        with served(tmp_path, env, layer_env) as site:
            analysis = AnalysisFactory(camera=CameraFactory(viewers=[site.viewer]))
            url = f"ws://127.0.0.1:{site.port}/ws/analyses/{analysis.pk}/"
            publisher = ChannelPublisher()
            sending = threading.Event()
            padding = "x" * 64_000

            def burst() -> None:
                index = 0
                while sending.is_set():
                    publisher.publish(
                        analysis.pk,
                        "score",
                        {
                            "frame_index": index,
                            "previous": index - 1 if index else None,
                            "pad": padding,
                        },
                    )
                    index += 1
                    time.sleep(0.01)

            async def scenario() -> None:
                headers = {"Cookie": site.cookie}
                pages = [
                    await websockets.connect(
                        url,
                        additional_headers=headers,
                        origin=site.base,
                        max_queue=1,  # a page that reads nothing more holds nothing more
                        close_timeout=1,
                    )
                    for _ in range(PAGES)
                ]
                for page in pages:
                    assert json.loads(await page.recv())["type"] == "snapshot"
                sending.set()
                thread = threading.Thread(target=burst)
                thread.start()
                try:
                    await asyncio.sleep(1.5)
                    await asyncio.gather(*(page.close() for page in pages))
                    await asyncio.sleep(2.5)  # daphne reaps (and logs) ended sockets each second
                finally:
                    sending.clear()
                    thread.join(10)

            asyncio.run(scenario())
            assert publisher.flush(10)
            stop(site.daphne)
            log = site.log("daphne")
    assert log.count("WSDISCONNECT") >= PAGES, log[-2000:]
    assert "Exception inside application" not in log and "Traceback" not in log, log[-3000:]
