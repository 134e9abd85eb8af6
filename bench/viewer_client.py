"""The viewers benchmark's clients (bench/viewers.py runs the servers and these).

- `watch_the_window`: many websocket viewers in one asyncio process, each running the tests'
  client (tests/support/live.py `watch`: it resyncs on a gap as the pages do), connected
  one after another, then watching until the window closes and every socket holds every
  score stored by then;
- `socket_report` / `tally`: what each socket held and how fast (latency from the worker's
  `published_at` to the receipt);
- `stored_scores`: what the database holds, which every socket must hold;
- `python -m bench.viewer_client`: one client process of the benchmark (`client_main`).

tests/live/test_live_load.py (200 viewers, one daphne, in its own process) runs the same
clients and reads the stored scores the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --- the process ------------------------------------------------------------------------


def setup_django() -> None:
    """Django, for the stored-scores read and for the clients (tests.support.live imports
    the socket's constants)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()


def raise_open_files(wanted: int) -> tuple[int, int]:
    """Room for many sockets here and in the children (inherited); returns the old limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, hard


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# --- the clients (shared with tests/live/test_live_load.py) -----------------------------


class SocketWatch:
    """`watch`'s stop condition for one socket, which also notes what it got.

    `watch` calls it after every message (and every idle second). The first time the held
    scores are non-empty, the snapshot has arrived: the client passed the access check and
    is in the analysis's group. It returns True (ending `watch`) once the socket holds
    every score in `target`, which is set when the window closes.
    """

    target: set[int] | None = None  # shared by all the sockets of a process

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.initial: set[int] = set()  # indices the first snapshot held
        self.scores: dict[int, dict[str, Any]] = {}  # watch's own dict, to explain a failure

    def __call__(self, scores: dict[int, dict[str, Any]]) -> bool:
        self.scores = scores
        if scores and not self.ready.is_set():
            self.initial = set(scores)
            self.ready.set()
        return SocketWatch.target is not None and SocketWatch.target <= scores.keys()


class JoinFailed(Exception):
    pass


@dataclass
class LoadRun:
    watches: list[SocketWatch]
    results: list[Any]  # per socket: watch's (scores, latencies), or the exception
    join_s: float  # from the first socket's connect to the last one's snapshot


async def watch_the_window(
    sockets: list[tuple[str, str]],
    origin: str,
    *,
    ramp_s: float,
    joined: Callable[[], Awaitable[None]],
    target: Callable[[], Awaitable[set[int]]],
    catch_up_s: float,
    join_timeout_s: float = 60,
    limit_s: float = 3600,
) -> LoadRun:
    """Connect every (url, cookie) socket, one after another over `ramp_s`; once each has
    its snapshot, await `joined()`; then `target()` (which returns when the window closes:
    the indices every socket must hold); then wait until each holds them, at most
    `catch_up_s`. Raises JoinFailed when a socket fails or is not in within the timeout."""
    from tests.support.live import watch

    watches = [SocketWatch() for _ in sockets]
    SocketWatch.target = None
    started = time.monotonic()
    tasks = []
    for (url, cookie), stop_when in zip(sockets, watches, strict=True):
        tasks.append(asyncio.create_task(watch(url, cookie, origin, stop_when, limit_s)))
        # Sockets arrive over a few seconds, not in one burst: daphne drops a handshake
        # that its application has not accepted within 5 s.
        await asyncio.sleep(ramp_s / len(sockets))
    everyone = asyncio.create_task(
        asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watches)), join_timeout_s)
    )
    await asyncio.wait([*tasks, everyone], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in tasks if t.done()]
    if not everyone.done() or everyone.exception() or failed:
        everyone.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, everyone, return_exceptions=True)
        raise JoinFailed(
            f"{sum(w.ready.is_set() for w in watches)} of {len(watches)} sockets got their "
            f"snapshot, {len(failed)} failed: {[repr(t.exception()) for t in failed][:3]}"
        )
    join_s = time.monotonic() - started
    await joined()
    window = asyncio.create_task(target())
    await asyncio.wait([window, *tasks], return_when=asyncio.FIRST_COMPLETED)
    while not window.done() and not all(t.done() for t in tasks):
        await asyncio.wait([window, *tasks], timeout=1)
    SocketWatch.target = await window
    await asyncio.wait(tasks, timeout=catch_up_s)
    # The ones left behind end as CancelledError. On Python 3.11 `asyncio.wait_for` (in
    # `watch`) can swallow a cancellation that meets a message: cancel again, a while.
    pending = [t for t in tasks if not t.done()]
    for _ in range(40):
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.5)
        pending = [t for t in pending if not t.done()]
    return LoadRun(watches, [outcome(t) for t in tasks], join_s)


def outcome(task: asyncio.Task[Any]) -> Any:
    """The task's result, or the exception that ended it (or that it did not end)."""
    if not task.done():
        return RuntimeError("still running 20 s after it was cancelled")
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception() or task.result()


def socket_report(
    watch: SocketWatch, result: Any, expected: list[tuple[int, float]]
) -> dict[str, Any]:
    """What one socket held of the scores `expected` (index, stored value) and how."""
    window = {i for i, _ in expected}
    if isinstance(result, BaseException):
        held = watch.scores
        return {
            "failed": repr(result),
            "held_all": False,
            "missing": len(window - held.keys()),
            "latencies": [],
            "live": 0,
            "due": 0,
            "resync": None,
        }
    scores, latencies = result
    wrong = [
        i for i, s in expected if i not in scores or abs(scores[i]["score"] - s) > 1e-6 * max(1, s)
    ]
    # A score held without `published_at` came from a snapshot; past the first snapshot,
    # from one that answered a resync. Missing the very first score after joining is the
    # join race (the snapshot is read before the group is joined).
    after_join = sorted(window - watch.initial)
    resent = [i for i in after_join if "published_at" not in scores.get(i, {"published_at": 0})]
    resync = None
    if resent:
        resync = "at join" if resent[0] == after_join[0] else "later"
    return {
        "failed": None,
        "held_all": not wrong,
        "missing": len(wrong),
        "latencies": latencies,
        "live": len(after_join) - len(resent),
        "due": len(after_join),
        "resync": resync,
    }


def tally(reports: list[dict[str, Any]], per_viewer: int = 1) -> dict[str, Any]:
    """Sums over socket reports (`per_viewer` consecutive sockets make one viewer)."""
    latencies = [x for r in reports for x in r["latencies"]]
    viewers = [reports[i : i + per_viewer] for i in range(0, len(reports), per_viewer)]
    summary: dict[str, Any] = {
        "sockets": len(reports),
        "viewers": len(viewers),
        "viewers_holding_every_score": sum(all(r["held_all"] for r in v) for v in viewers),
        "sockets_failed": sum(r["failed"] is not None for r in reports),
        "failures": [r["failed"] for r in reports if r["failed"]][:3],
        "sockets_missing_scores": sum(r["missing"] > 0 for r in reports),
        "held_live": sum(r["live"] for r in reports),
        "due_after_join": sum(r["due"] for r in reports),
        "resyncs": {
            "at join": sum(r["resync"] == "at join" for r in reports),
            "later": sum(r["resync"] == "later" for r in reports),
        },
        "deliveries": len(latencies),
    }
    if latencies:
        summary["latency_ms"] = {
            name: round(percentile(latencies, q) * 1000, 1)
            for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        }
    return summary


def stored_scores(analysis_id: int) -> list[tuple[int, float]]:
    """Every (frame index, score) stored for the analysis, in order.

    The connection is closed afterwards: the caller may be a worker thread of an event loop
    (Django refuses the ORM inside the loop itself), and the benchmark's own connection
    must not sit open on the SQLite file the daphnes and the worker write.
    """
    from django.db import connections

    from detection.models import FrameScore

    try:
        return list(
            FrameScore.objects.filter(analysis_id=analysis_id)
            .order_by("frame_index")
            .values_list("frame_index", "score")
        )
    finally:
        connections.close_all()


# --- one client process ---------------------------------------------------------------


def client_main() -> None:
    """`python -m bench.viewer_client`: a JSON job on stdin's first line; prints
    "joined <seconds>" once every socket has its snapshot, reads the expected scores
    ([[index, score], ...]) as the next line when the window closes, prints its socket
    reports as JSON and exits."""
    setup_django()
    job = json.loads(sys.stdin.readline())
    raise_open_files(len(job["sockets"]) * 2 + 256)
    expected: list[tuple[int, float]] = []

    async def joined() -> None:
        print("joined", flush=True)

    async def target() -> set[int]:
        line = await asyncio.to_thread(sys.stdin.readline)
        expected.extend((int(i), float(s)) for i, s in json.loads(line))
        return {i for i, _ in expected}

    async def main() -> None:
        try:
            run = await watch_the_window(
                [tuple(s) for s in job["sockets"]],
                job["origin"],
                ramp_s=job["ramp_s"],
                joined=joined,
                target=target,
                catch_up_s=job["catch_up_s"],
                join_timeout_s=job["join_timeout_s"],
            )
        except JoinFailed as exc:
            print("failed", json.dumps(str(exc)), flush=True)
            return
        reports = [
            socket_report(w, r, expected) for w, r in zip(run.watches, run.results, strict=True)
        ]
        print("reports", json.dumps({"join_s": run.join_s, "reports": reports}), flush=True)

    # Reported from inside the loop, then out at once: a socket that would not stop must
    # not hold the process in asyncio.run's own clean-up.
    asyncio.run(main())
    os._exit(0)


if __name__ == "__main__":
    client_main()
