"""Load and abuse on a real daphne: 200 live viewers, and websocket messages over 1 MiB.

The viewers: one real daphne, one real `run_detector` scoring a live MJPEG camera at 1
frame/s for a minute, 200 websocket clients in this process (each its own user and
session, allowed through a viewer group), through Redis when TEST_REDIS_URL is set, else
through the embedded SQLite layer. Each client runs `watch` (tests/support/live.py), so it
resyncs on a gap exactly as test_live_cross_process.py's client (and the page) does.

The cap: daphne >= 4.2.2 refuses an incoming websocket message or frame over 1 MiB by
default (`--websocket-max-message-size` / `--websocket-max-frame-size`, passed to
autobahn's `maxMessagePayloadSize` / `maxFramePayloadSize`; before 4.2.2 there was no
limit, CVE-2026-44545). Autobahn checks the length announced in the frame header and
drops the TCP connection at once (its `failByDrop` default: the client sees 1006, not a
1009 close frame), so the payload is never buffered. Both the documented command line
(`daphne ... portal.asgi:application`) and `manage.py runserver` (daphne's, what `make
run` serves with; `DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE`, default 1 MiB) are checked. The
same limit applies to what the server sends: a reply over 1 MiB is not sent and the
socket closes with 1011, so the largest reply (a resync) must stay under it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from django.contrib.auth.models import User

from bench.viewer_client import (
    JoinFailed,
    SocketWatch,
    raise_open_files,
    socket_report,
    stored_scores,
    tally,
    watch_the_window,
)
from bench.viewers import daphne, process
from detection.live.consumers import MAX_RESYNC
from detection.models import Analysis, FrameScore
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, GroupFactory, UserFactory
from tests.support.live import full_resync_analysis
from tests.support.processes import cpu_seconds, manage, rss_kib, tail
from tests.support.services import REDIS_URL
from tests.support.sessions import session_cookie
from tests.support.streams import MJPEGServer, free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.slow,
]

VIEWERS = 200
WINDOW_S = 60.0  # how long the 200 viewers watch a 1-frame/s analysis
CATCH_UP_S = 20.0  # after the window: for every viewer to hold every stored score
RAMP_S = 5.0  # viewers connect one after another over this long
CAP = 1024 * 1024  # daphne's default limit on an incoming websocket message (and frame)
MIB = 1024 * 1024
# Closed for the size: 1009 (message too big) in a close frame, or 1006 (abnormal: the
# server dropped the connection without one, which is what autobahn does by default).
REFUSED = {1009, 1006}


# --- processes -------------------------------------------------------------------------


@pytest.fixture
def many_open_files() -> Iterator[None]:
    """Room for 200 client sockets here and 200 server sockets in daphne (inherited)."""
    soft, hard = raise_open_files(4096)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- 200 viewers -------------------------------------------------------------------------
# The clients are the viewers benchmark's (bench/viewer_client.py; `python -m bench.viewers`
# runs 1,000 viewers, each with two sockets, on several daphnes behind nginx):
# `watch_the_window` connects them, `socket_report` / `tally` say what each held and how
# fast, and `stored_scores` reads what they must hold (from a worker thread of the loop).


def wait_for_first_score(analysis_id: int, worker: subprocess.Popen, log: Path) -> None:
    def stored() -> bool:
        assert worker.poll() is None, f"run_detector exited early:\n{tail(log)}"
        return FrameScore.objects.filter(analysis_id=analysis_id).exists()

    wait_until(stored, 90, "a first stored score", lambda: f"\n{tail(log)}", every=0.2)


def channel_layer(tmp_path: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Redis when TEST_REDIS_URL is set (CI), else the embedded layer, as run_live does."""
    if REDIS_URL:
        return "Redis (channels_redis)", {"CHANNELS_LAYER": "redis", "REDIS_URL": REDIS_URL}
    layer = {"CHANNELS_LAYER": "sqlite", "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3")}
    done = manage("migrate_channels", env={**env, **layer}, timeout=120)
    assert done.returncode == 0, done.stderr
    return "embedded (channels-lite, SQLite)", layer


def behind(watch: SocketWatch, expected: set[int]) -> str:
    missing = sorted(expected - watch.scores.keys())
    return f"holds {len(watch.scores)}, misses {len(missing)} from {missing[:1]}"


@pytest.mark.usefixtures("many_open_files")
def test_it_delivers_every_score_to_200_viewers_of_a_live_camera(tmp_path, subprocess_env):
    layer_name, layer = channel_layer(tmp_path, subprocess_env)
    env = {**subprocess_env, **layer}
    wall = GroupFactory(name="wall")
    users = User.objects.bulk_create(User(username=f"viewer{i}") for i in range(VIEWERS))
    wall.user_set.add(*users)
    cookies = [session_cookie(u) for u in users]
    port = free_port()
    worker_log = tmp_path / "worker.log"
    cpu: dict[str, float] = {}

    with MJPEGServer(fps=5) as camera_server:
        camera = CameraFactory(kind="stream", source=camera_server.url, viewer_groups=[wall])
        # Motion gating off: every 1-s tick is scored, so the pace is exactly 1 frame/s.
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=1.0, motion_gating=False
        )
        detector = [sys.executable, str(ROOT / "manage.py"), "run_detector", "--poll", "0.2"]
        with (
            process(daphne(port), env, tmp_path / "daphne.log") as server,
            process(detector, env, worker_log) as worker,
        ):
            wait_for_port(port)
            # Viewers join a running analysis, so every snapshot holds at least one score:
            # that is how a viewer shows it passed the access check and joined the group.
            wait_for_first_score(analysis.pk, worker, worker_log)
            first_score_at = time.monotonic()
            pids = {"daphne": server.pid, "worker": worker.pid, "clients": os.getpid()}

            async def joined() -> None:
                cpu.update({name: -cpu_seconds(pid) for name, pid in pids.items()})
                cpu["window_s"] = -time.monotonic()

            async def window_closed() -> set[int]:
                # The viewers watch until WINDOW_S after the first score; then each must
                # hold every score stored by then (at most CATCH_UP_S more).
                await asyncio.sleep(max(0.0, first_score_at + WINDOW_S - time.monotonic()))
                for name, pid in pids.items():
                    cpu[name] += cpu_seconds(pid)
                cpu["window_s"] += time.monotonic()
                return {i for i, _ in await asyncio.to_thread(stored_scores, analysis.pk)}

            try:
                run = asyncio.run(
                    watch_the_window(
                        [(f"ws://127.0.0.1:{port}/ws/analyses/{analysis.pk}/", c) for c in cookies],
                        f"http://127.0.0.1:{port}",
                        ramp_s=RAMP_S,
                        joined=joined,
                        target=window_closed,
                        catch_up_s=CATCH_UP_S,
                    )
                )
            except JoinFailed as exc:
                pytest.fail(str(exc))
            assert worker.poll() is None, f"run_detector died:\n{tail(worker_log)}"
            assert server.poll() is None, f"daphne died:\n{tail(tmp_path / 'daphne.log')}"

    window = SocketWatch.target or set()
    expected = [(i, s) for i, s in stored_scores(analysis.pk) if i in window]
    assert len(expected) >= WINDOW_S * 0.8, f"only {len(expected)} scores in {WINDOW_S:.0f} s"
    reports = [socket_report(w, r, expected) for w, r in zip(run.watches, run.results, strict=True)]
    # No viewer was disconnected or left behind; every score of the window is held with its
    # stored value, live or by resync.
    failed = {
        n: f"{r['failed']}, {behind(run.watches[n], window)}"
        for n, r in enumerate(reports)
        if r["failed"] or not r["held_all"]
    }
    assert not failed, f"{len(failed)} of {VIEWERS} viewers failed: {list(failed.items())[:3]}"
    summary = tally(reports)
    latency = summary["latency_ms"]
    window_s = cpu.pop("window_s")
    print(
        f"\n{VIEWERS} viewers, {layer_name} layer, {len(expected)} scores stored in "
        f"{WINDOW_S:.0f} s, viewers joined in {run.join_s:.1f} s; {summary['held_live']} of "
        f"{summary['due_after_join']} scores held from live messages, viewers resynced: "
        f"{summary['resyncs']}; score-to-socket latency over {summary['deliveries']} "
        f"deliveries p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms, p99 "
        f"{latency['p99']:.0f} ms, max {latency['max']:.0f} ms; CPU over {window_s:.0f} s: "
        + ", ".join(f"{k} {v / window_s:.0%}" for k, v in cpu.items())
        + f"; load average {os.getloadavg()[0]:.1f}"
    )
    assert summary["held_live"] >= summary["due_after_join"] * 0.9, (
        "most scores should arrive live, not by resync"
    )
    # Generous: on 2 shared cores a second is already a sluggish page.
    assert latency["p50"] < 1000


# --- messages over 1 MiB ----------------------------------------------------------------


def noise(size: int) -> str:
    """A JSON object of exactly `size` bytes that the consumer has no use for."""
    head = '{"type": "noise", "pad": "'
    return head + "x" * (size - len(head) - 2) + '"}'


async def refused(url: str, cookie: str, origin: str, size: int) -> int:
    """Connect, send one text message of `size` bytes, then a resync request.

    Returns the close code the client saw. Autobahn (`failByDrop`, its default) aborts
    the TCP connection instead of sending a close frame, so a client sees 1006, not
    1009. Had the message been accepted, the resync would be answered.
    """
    async with websockets.connect(
        url, additional_headers={"Cookie": cookie}, origin=origin, open_timeout=10
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"
        try:
            await ws.send(noise(size))
            await ws.send(json.dumps({"type": "resync", "after": -1}))
            reply = await asyncio.wait_for(ws.recv(), timeout=10)
        except websockets.ConnectionClosedError:
            assert ws.close_code is not None
            return ws.close_code
    raise AssertionError(f"a {size}-byte message was accepted: {reply[:80]}")


def viewer_and_cookie() -> tuple[int, str]:
    viewer = UserFactory(username="prober")
    camera = CameraFactory(viewers=[viewer])
    return AnalysisFactory(camera=camera).pk, session_cookie(viewer)


def test_it_refuses_a_message_over_1_mib_and_keeps_daphne_memory_flat(tmp_path, subprocess_env):
    analysis_id, cookie = viewer_and_cookie()
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws/analyses/{analysis_id}/"
    origin = f"http://127.0.0.1:{port}"

    async def scenario(pid: int) -> tuple[int | None, dict[str, int], dict[str, int]]:
        # Just under the cap: handled (the consumer ignores what it does not know), and
        # the socket still answers the one request a client may make.
        async with websockets.connect(
            url, additional_headers={"Cookie": cookie}, origin=origin, open_timeout=10
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            await ws.send(noise(CAP))
            await ws.send(json.dumps({"type": "resync", "after": -1}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            assert reply["type"] == "snapshot" and reply["resync"] is True
        code = await refused(url, cookie, origin, CAP + 1)
        before = rss_kib(pid)
        # 20 attempts at 32 MiB. Without the cap the peak (VmHWM) rises by ~3x the message
        # size per message (measured: +46 MiB at 16 MiB); with it, by nothing.
        codes = [await refused(url, cookie, origin, 32 * MIB) for _ in range(20)]
        assert set(codes) <= REFUSED, codes
        return code, before, rss_kib(pid)

    with process(daphne(port), subprocess_env, tmp_path / "daphne.log") as server:
        wait_for_port(port)
        code, before, after = asyncio.run(scenario(server.pid))
        assert server.poll() is None, tail(tmp_path / "daphne.log")
    assert code in REFUSED, f"1 MiB + 1 byte: closed with {code}, expected {REFUSED}"
    grown = {k: (after[k] - before[k]) / 1024 for k in before}
    print(f"\ndaphne memory over 20 refused 32 MiB messages: {before} -> {after} KiB")
    assert grown["VmRSS"] < 30 and grown["VmHWM"] < 30, f"daphne grew by {grown} MiB"


def test_it_refuses_a_message_over_1_mib_on_the_make_run_server(tmp_path, subprocess_env):
    analysis_id, cookie = viewer_and_cookie()
    port = free_port()
    command = [sys.executable, str(ROOT / "manage.py"), "runserver", "--noreload", str(port)]
    with process(command, subprocess_env, tmp_path / "runserver.log"):
        wait_for_port(port)
        code = asyncio.run(
            refused(
                f"ws://127.0.0.1:{port}/ws/analyses/{analysis_id}/",
                cookie,
                f"http://127.0.0.1:{port}",
                CAP + 1,
            )
        )
    assert code in REFUSED


def test_it_sends_the_largest_resync_under_the_1_mib_cap(tmp_path, subprocess_env):
    """A resync of MAX_RESYNC scores reaches the page through a real daphne.

    Autobahn applies daphne's 1 MiB limit to outgoing messages too: a bigger reply raises
    in the consumer, the socket closes with 1011, and a page that reconnects with the same
    `after` fails the same way for ever. Realistic worst-case rows: large frame indices,
    full-precision floats, a timestamp with microseconds (~185 bytes each in JSON).
    """
    viewer = UserFactory(username="catching-up")
    analysis = Analysis.objects.get(pk=full_resync_analysis(viewer))
    cookie = session_cookie(viewer)
    port = free_port()

    async def resync() -> tuple[list[int], int]:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/analyses/{analysis.pk}/",
            additional_headers={"Cookie": cookie},
            origin=f"http://127.0.0.1:{port}",
            open_timeout=10,
            max_size=None,
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            await ws.send(json.dumps({"type": "resync", "after": -1}))
            held: list[int] = []
            largest = 0
            # One reply, or several (should the consumer page its replies).
            while len(held) < MAX_RESYNC:
                try:
                    text = await asyncio.wait_for(ws.recv(), timeout=20)
                except websockets.ConnectionClosedError as closed:
                    raise AssertionError(
                        f"the socket closed ({closed}) instead of sending {MAX_RESYNC} "
                        f"scores: a reply over {CAP} bytes? (MAX_RESYNC in consumers.py)"
                    ) from None
                message = json.loads(text)
                if message["type"] == "snapshot":
                    largest = max(largest, len(text.encode()))
                    held += [s["frame_index"] for s in message["scores"]]
            return held, largest

    with process(daphne(port), subprocess_env, tmp_path / "daphne.log"):
        wait_for_port(port)
        held, largest = asyncio.run(resync())
    # The newest MAX_RESYNC scores, in order.
    assert held == list(range(1_000_001, 1_000_001 + MAX_RESYNC))
    print(f"\nresync of {MAX_RESYNC} scores: largest reply {largest} bytes")
    assert largest <= CAP
