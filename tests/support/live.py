"""Clients of the live socket: a watcher that resyncs as the page does, the page's own
static/js/live.js under Node, and the analysis whose resync is the largest reply.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from detection.live.consumers import MAX_RESYNC
from detection.models import FrameScore
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory
from tests.support.processes import stop

NODE = shutil.which("node")


async def watch(url: str, cookie: str, origin: str, stop_when, timeout: float = 60):
    """Collect score messages until `stop_when(messages)`; resync on a gap, as the page does
    (static/js/live.js): one request, then none until its reply; a score already held or
    older than the newest held is no gap."""
    scores: dict[int, dict] = {}
    latencies: list[float] = []
    last = None
    resyncing = False
    async with websockets.connect(
        url, additional_headers={"Cookie": cookie}, origin=origin, open_timeout=10
    ) as ws:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not stop_when(scores):
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for makes a task per
                # call, which at 1,000 viewers was a tenth of the simulated browsers' CPU,
                # on the cores the servers measured share (bench/viewers.py).
                async with asyncio.timeout(1):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            message = json.loads(raw)
            if message["type"] == "snapshot":
                resyncing = False
                for s in message["scores"]:
                    scores[s["frame_index"]] = s
                last = max(scores, default=last)
            elif message["type"] == "score":
                if "published_at" in message:  # not on a tail relayed by the 15 s re-check
                    latencies.append(time.time() - message["published_at"])
                previous = message["previous"]
                gap = last is not None and previous is not None and previous > last
                if gap and not resyncing:
                    resyncing = True
                    await ws.send(json.dumps({"type": "resync", "after": last}))
                scores[message["frame_index"]] = message
                last = max(last or 0, message["frame_index"])
    return scores, latencies


# The page's own script under Node: static/js/live.js with a `window` shim and Node's
# WebSocket (sending the session cookie and Origin a browser would). Reports JSON lines on
# stdout; when stdin closes it prints the series it holds and exits.
PAGE_JS = r"""
const fs = require("fs");
const vm = require("vm");
const [script, base, path, cookie] = process.argv.slice(2);
const report = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const NodeWebSocket = globalThis.WebSocket;
class PageSocket extends NodeWebSocket {
  constructor(url) {
    super(url, { headers: { Cookie: cookie, Origin: base } });
  }
  send(data) {
    report({ event: "sent", data: JSON.parse(data) });
    super.send(data);
  }
}
globalThis.WebSocket = PageSocket;
globalThis.window = {
  location: new URL(path, base),
  setTimeout,
  clearTimeout,
  addEventListener() {},
};
vm.runInThisContext(fs.readFileSync(script, "utf8"), { filename: script });
const series = [];
const live = window.clipwatch.connect(path, {
  onState(state) {
    report({ event: "state", state });
  },
  onSnapshot(msg, append) {
    if (!append) series.length = 0;
    const scores = msg.scores.map((s) => [s.frame_index, s.score]);
    series.push(...scores);
    report({ event: "snapshot", append, scores });
  },
  onScore(msg) {
    series.push([msg.frame_index, msg.score]);
    report({ event: "score", score: [msg.frame_index, msg.score] });
  },
  onMessage() {},
});
process.stdin.on("end", () => {
  live.close();
  report({ event: "final", series });
  process.exit(0);
});
process.stdin.resume();
"""


def node_websocket_ok() -> bool:
    if NODE is None:
        return False
    probe = subprocess.run(
        [
            NODE,
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


class NodePage:
    """static/js/live.js running under Node against the test's daphne."""

    def __init__(self, folder: Path, base: str, path: str, cookie: str) -> None:
        harness = folder / "page.js"
        harness.write_text(PAGE_JS)
        assert NODE
        self.events: list[dict[str, Any]] = []
        self.process = subprocess.Popen(
            [
                *(NODE, "--experimental-websocket", "--no-warnings", str(harness)),
                *(str(ROOT / "static/js/live.js"), base, path, cookie),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(folder / "node.log").open("w"),
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            with suppress(ValueError):
                self.events.append(json.loads(line))

    def resyncs(self) -> int:
        return sum(1 for e in self.events if e["event"] == "sent" and e["data"]["type"] == "resync")

    def states(self) -> list[str]:
        return [e["state"] for e in self.events if e["event"] == "state"]

    def series(self) -> list[tuple[int, float]]:
        """What the page holds now, replayed from its reports (as `finish` would print)."""
        held: list[tuple[int, float]] = []
        for event in list(self.events):
            if event["event"] == "snapshot":
                if not event["append"]:
                    held.clear()
                held.extend((i, s) for i, s in event["scores"])
            elif event["event"] == "score":
                held.append(tuple(event["score"]))
        return held

    def finish(self) -> list[tuple[int, float]]:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait(timeout=15)
        self._reader.join(timeout=5)
        final = [e for e in self.events if e["event"] == "final"]
        assert final, f"live.js under Node printed no final state: {self.events[-5:]}"
        return [(i, s) for i, s in final[0]["series"]]

    def stop(self) -> None:
        stop(self.process)


def full_resync_analysis(viewer) -> int:
    """An analysis whose every resync from the start is the largest reply: MAX_RESYNC scores.

    Realistic worst-case rows: large frame indices, full-precision floats, a timestamp with
    microseconds (~185 bytes each in JSON).
    """
    from django.utils import timezone

    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]))
    rng = np.random.default_rng(0)
    now = timezone.now()
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=analysis,
            frame_index=1_000_000 + i,
            time_s=float(rng.uniform(0, 1e6)),
            captured_at=now,
            score=float(rng.random()),
            normal_similarity=float(rng.random()),
            anomaly_similarity=float(rng.random()),
        )
        for i in range(MAX_RESYNC + 1)
    )
    return analysis.pk
