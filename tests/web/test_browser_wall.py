"""The dashboard wall in headless Chromium: it follows the database without a reload.

Real daphne (the embedded SQLite channel layer), real browsers logged in with real session
cookies, the real worker for the end-to-end run (tiny random CLIP). Two tests:

- database changes made by the test (no worker, so only the status poll can see them):
  queued -> running (with a phase) -> a frame -> completed -> failed, a re-run that resets
  the card, a camera newly shared, an analysis added, access revoked; the camera's error
  shown without its password. Each change is timed from its commit to the page showing it
  (the numbers are printed: the wall's latency through the poll);
- the real worker scores a file while the page watches, then the analysis is re-run and
  scored again: the card follows queued -> running -> completed twice, its chart and count
  end equal to what the database holds (no "191 frames scored" where 159 are stored). The
  first run's scores and new pictures reach the card through its socket alone (the poll
  held back): the score of each new picture carries its URL.

With SCREENSHOTS=1 a third test runs four real sample videos (/work/shared/data) through the
worker and writes docs/screenshot-wall.png (1280x800).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.utils import timezone

from cameras.models import Camera
from detection import actions
from detection.frames import latest_frame_path
from detection.models import Analysis, FrameScore
from detection.web.wall import POLL_SECONDS
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory
from tests.support.processes import migrate_channels, start_daphne, start_worker, stop, tail
from tests.support.sessions import session_key
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.web.test_browser import log_in, new_browser, stored_indexes

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.browser,
    pytest.mark.slow,
]

SECRET = "hunter2secret"
SECRET_URL = f"rtsp://admin:{SECRET}@10.0.0.7:554/stream1"
TIMEOUT = 30  # generous: two cores shared with other tests

# The wall as the page shows it, per camera and per analysis (ids as strings).
READ_WALL = """
const text = (el) => (el && !el.hidden ? el.textContent.trim() : "");
const pick = (root, name) => root.querySelector(`[data-role="${name}"]`);
const out = {page: pick(document, "page-state").dataset.state, cameras: {}, analyses: {}};
for (const card of document.querySelectorAll("li.card.camera")) {
  out.cameras[card.dataset.camera] = {
    status: text(pick(card, "camera-status")),
    error: text(pick(card, "camera-error")),
    streaming: text(pick(card, "camera-streaming")),
    analyses: Array.from(card.querySelectorAll("li.analysis-item"), (li) => li.dataset.analysis),
  };
}
for (const li of document.querySelectorAll("li.analysis-item")) {
  const chart = window.Chart ? window.Chart.getChart(li.querySelector("canvas")) : null;
  const img = pick(li, "frame");
  out.analyses[li.dataset.analysis] = {
    status: text(pick(li, "analysis-status")),
    phase: text(pick(li, "phase")),
    error: text(pick(li, "analysis-error")),
    frames: text(pick(li, "frames")),
    score: text(pick(li, "score")),
    overlay: text(pick(li, "frame-score")),
    indexes: chart ? chart.data.datasets[0].data.map((p) => p.i) : null,
    src: img.getAttribute("src"),
    loaded: img.complete && img.naturalWidth > 0 && !img.hidden,
    placeholder: text(pick(li, "frame-placeholder")),
  };
}
return out;
"""

# The status poll held back (its requests fail, as with the server away): then only the
# socket can move a card. RELEASE_POLL lets it through again.
HOLD_POLL = """
const url = document.getElementById("wall").dataset.stateUrl;
window.heldFetch = window.heldFetch || window.fetch;
window.fetch = (input, init) =>
  String(input).includes(url)
    ? Promise.reject(new TypeError("held by the test"))
    : window.heldFetch(input, init);
"""
RELEASE_POLL = "if (window.heldFetch) window.fetch = window.heldFetch;"


def write_frame(analysis_id: int, colour: tuple[int, int, int]) -> None:
    """A JPEG where the worker writes an analysis's latest frame."""
    path = latest_frame_path(analysis_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((180, 320, 3), np.uint8)
    image[:] = colour
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())


def add_scores(analysis: Analysis, indexes: list[int], score: float = 0.4) -> None:
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=analysis,
            frame_index=i,
            time_s=i / 10,
            score=score,
            normal_similarity=0.2,
            anomaly_similarity=0.2,
        )
        for i in indexes
    )


class Wall:
    """A browser on the dashboard, and the servers behind it."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path, self.env = tmp_path, env
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = start_daphne(env, self.port, tmp_path / "daphne.log")
        self.drivers: list = []
        try:
            wait_for_port(self.port)
        except AssertionError:
            stop(self.server, signal.SIGKILL)
            raise

    def browse(self, user):
        driver = new_browser(self.tmp_path / f"profile-{user.username}")
        self.drivers.append(driver)
        log_in(driver, self.base, session_key(user))
        driver.get(f"{self.base}/")
        self.driver = driver
        wait_until(lambda: self.read()["page"] == "live", TIMEOUT, "the wall's first poll")
        return driver

    def read(self) -> dict:
        return self.driver.execute_script(READ_WALL)

    def until(self, check, what: str, timeout: float = TIMEOUT) -> dict:
        """The wall once `check(wall)` holds."""

        def ready():
            wall = self.read()
            try:
                return wall if check(wall) else None
            except KeyError:  # a card not there (yet)
                return None

        return wait_until(ready, timeout, what, lambda: f"the wall: {self.read()}", every=0.05)

    def js_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if "Uncaught" in e["message"]]

    def close(self) -> None:
        for driver in self.drivers:
            try:
                driver.quit()
            except Exception:  # noqa: BLE001 - a dead browser must not hide the real failure
                pass
        stop(self.server)


@pytest.fixture
def wall_env(tmp_path, subprocess_env) -> dict[str, str]:
    env = {
        **subprocess_env,
        "CHANNELS_LAYER": "sqlite",
        "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3"),
    }
    migrate_channels(env)
    return env


def test_it_follows_the_database_without_a_reload(tmp_path, wall_env):
    watcher = UserFactory(username="watcher")
    yard = CameraFactory(name="Yard", kind="file", source=str(tmp_path / "yard.mp4"))
    yard.viewers.add(watcher)
    check = AnalysisFactory(camera=yard, name="Yard check", status="queued")
    gate = CameraFactory(
        name="Gate",
        source=SECRET_URL,
        status=Camera.Status.RECONNECTING,
        last_error=f"cannot open {SECRET_URL}: connection refused",
        viewers=[watcher],
    )
    watch = AnalysisFactory(
        camera=gate,
        name="Gate watch",
        status="completed",
        frames_scored=5,
        last_frame_index=40,
        last_score=0.45,
        started_at=timezone.now(),
        window_size=100,
    )
    add_scores(watch, [0, 10, 20, 30, 40], 0.45)
    a, w = str(check.pk), str(watch.pk)
    wall = Wall(tmp_path, wall_env)
    latencies: dict[str, float] = {}

    phases = random.Random(14)

    def timed(what: str, change, check_):
        # Each change would otherwise come just after the poll that showed the previous one
        # (the worst case, a whole interval): land it anywhere in the poll's cycle instead.
        time.sleep(phases.uniform(0, POLL_SECONDS))
        started = time.monotonic()
        change()
        shown = wall.until(check_, what)
        latencies[what] = time.monotonic() - started
        return shown

    try:
        wall.browse(watcher)
        first = wall.until(lambda s: s["analyses"][w]["indexes"] == [0, 10, 20, 30, 40], "chart")
        assert first["cameras"][str(yard.pk)]["status"] == "Queued"
        assert first["cameras"][str(gate.pk)]["status"] == "Reconnecting"
        assert first["cameras"][str(gate.pk)]["streaming"] == "Camera: no frames"
        assert first["cameras"][str(gate.pk)]["error"] == (
            "cannot open rtsp://admin:***@10.0.0.7:554/stream1: connection refused"
        )
        assert first["analyses"][a]["placeholder"] == "No frame scored yet"
        assert first["analyses"][w]["frames"] == "5 frames scored"

        def update(analysis: Analysis, **fields) -> None:
            Analysis.objects.filter(pk=analysis.pk).update(**fields, updated_at=timezone.now())

        # queued -> running, loading its model
        timed(
            "running, with its phase",
            lambda: update(
                check,
                status="running",
                started_at=timezone.now(),
                metadata={"phase": "loading model"},
            ),
            lambda s: (
                s["analyses"][a]["status"] == "Running"
                and s["analyses"][a]["phase"] == "loading model"
                and s["cameras"][str(yard.pk)]["status"] == "Analysing"
            ),
        )

        # the first frames: the picture and its score appear, then move on
        def frame(index: int, colour) -> None:
            write_frame(check.pk, colour)
            update(
                check,
                frames_scored=index // 10 + 1,
                last_frame_index=index,
                last_score=0.72,
                metadata={},
            )

        shown = timed(
            "a frame",
            lambda: frame(10, (0, 120, 0)),
            lambda s: s["analyses"][a]["loaded"] and s["analyses"][a]["src"].endswith("?v=10"),
        )
        assert shown["analyses"][a]["overlay"] == "0.720"
        assert shown["analyses"][a]["phase"] == ""
        assert shown["analyses"][a]["frames"] == "2 frames scored"
        timed(
            "the next frame",
            lambda: frame(20, (0, 0, 160)),
            lambda s: s["analyses"][a]["loaded"] and s["analyses"][a]["src"].endswith("?v=20"),
        )

        # running -> completed -> failed, with its reason
        timed(
            "completed",
            lambda: update(check, status="completed", finished_at=timezone.now()),
            lambda s: (
                s["analyses"][a]["status"] == "Completed"
                and s["cameras"][str(yard.pk)]["status"] == "Analysed"
            ),
        )
        timed(
            "failed, with its reason",
            lambda: update(check, status="failed", error_message="The video cannot be decoded."),
            lambda s: (
                s["analyses"][a]["error"] == "The video cannot be decoded."
                and s["cameras"][str(yard.pk)]["status"] == "Failed"
            ),
        )

        # a re-run: the card forgets the old run (chart, score, count) ...
        shown = timed(
            "a re-run resets the card",
            lambda: actions.rerun(Analysis.objects.filter(pk=watch.pk)),
            lambda s: (
                s["analyses"][w]["status"] == "Queued"
                and s["analyses"][w]["indexes"] == []
                and s["analyses"][w]["frames"] == "0 frames scored"
            ),
        )
        assert shown["analyses"][w]["score"] == "" and shown["analyses"][w]["overlay"] == ""
        # ... and follows the new one, counting what the database holds
        add_scores(watch, [0, 10], 0.8)
        timed(
            "the new run",
            lambda: update(
                watch,
                status="running",
                started_at=timezone.now(),
                frames_scored=2,
                last_frame_index=10,
                last_score=0.8,
            ),
            lambda s: (
                s["analyses"][w]["indexes"] == [0, 10]
                and s["analyses"][w]["frames"] == "2 frames scored"
                and s["analyses"][w]["status"] == "Running"
            ),
        )

        # a camera shared later appears; an analysis added later appears
        def share() -> None:
            dock = CameraFactory(name="Dock", status="online", last_frame_at=timezone.now())
            AnalysisFactory(camera=dock, name="Dock watch", status="running")
            dock.viewers.add(watcher)

        shown = timed(
            "a newly shared camera",
            share,
            lambda s: any(c["streaming"] == "Camera: streaming" for c in s["cameras"].values()),
        )
        assert len(shown["cameras"]) == 3
        added = []
        timed(
            "a new analysis on a camera",
            lambda: added.append(AnalysisFactory(camera=yard, name="Yard night", status="queued")),
            lambda s: s["cameras"][str(yard.pk)]["analyses"] == [a, str(added[0].pk)],
        )

        # access revoked: the card goes
        timed(
            "access revoked",
            lambda: gate.viewers.remove(watcher),
            lambda s: str(gate.pk) not in s["cameras"],
        )

        assert SECRET not in wall.driver.page_source
        assert not wall.js_errors(), wall.js_errors()
        values = sorted(latencies.values())
        print(
            f"\nwall latency through the poll (commit -> shown), {len(values)} changes: "
            f"median {statistics.median(values):.2f} s, max {max(values):.2f} s; "
            + ", ".join(f"{k} {v:.2f}" for k, v in latencies.items())
        )
    finally:
        wall.close()


def test_it_follows_a_real_run_and_a_re_run(tmp_path, make_video, wall_env):
    watcher = UserFactory(username="watcher")
    clip = make_video("street.avi", frames=300, fps=10.0)
    camera = CameraFactory(name="Street", kind="file", source=str(clip), viewers=[watcher])
    analysis = AnalysisFactory(
        camera=camera,
        name="Street watch",
        status="queued",
        sampling_fps=5.0,
        window_size=200,  # the chart keeps every point of the run
        normal_prompts="a pedestrian crossing",
        anomaly_prompts="a crowd running",
    )
    key = str(analysis.pk)
    wall = Wall(tmp_path, wall_env)
    worker = None

    try:
        wall.browse(watcher)
        assert wall.read()["analyses"][key]["status"] == "Queued"
        for run in (1, 2):
            if run == 1:
                # The first run through the socket alone: its scores, and the picture that
                # the score of each new one names.
                wall.driver.execute_script(HOLD_POLL)
            pictures: set[str] = set()

            def moving(s, run=run, pictures=pictures) -> bool:
                item = s["analyses"][key]
                if item["loaded"]:
                    pictures.add(item["src"])
                return (
                    item["status"] in ("Running", "Completed")
                    and item["loaded"]
                    and len(item["indexes"]) >= 3
                    and (run == 2 or len(pictures) >= 2)
                )

            worker = start_worker(wall_env, "--once", "--batch-size", "2")
            seen = wall.until(
                moving, f"run {run}: the card to show scores and new frames", timeout=90
            )
            assert "?v=" in seen["analyses"][key]["src"]
            assert all("/frame.jpg?v=" in src for src in pictures), pictures
            wall.driver.execute_script(RELEASE_POLL)
            assert worker.wait(timeout=180) == 0, worker.stdout.read()[-3000:]
            worker = None
            stored = stored_indexes(analysis.pk)
            assert len(stored) == 150
            done = wall.until(
                lambda s, stored=stored: (
                    s["analyses"][key]["status"] == "Completed"
                    and s["analyses"][key]["indexes"] == stored
                ),
                f"run {run}: the card to finish",
            )
            assert done["analyses"][key]["frames"] == f"{len(stored)} frames scored"
            # The camera's state comes with the next poll (the socket is the analysis's).
            wall.until(
                lambda s: s["cameras"][str(camera.pk)]["status"] == "Analysed",
                f"run {run}: the camera to read Analysed",
            )
            if run == 1:
                actions.rerun(Analysis.objects.filter(pk=analysis.pk))
                wall.until(
                    lambda s: (
                        s["analyses"][key]["status"] == "Queued"
                        and s["analyses"][key]["indexes"] == []
                        and s["analyses"][key]["frames"] == "0 frames scored"
                    ),
                    "the card to reset on the re-run",
                )
        assert not wall.js_errors(), wall.js_errors()
    finally:
        stop(worker)
        wall.close()


SAMPLES = Path(os.environ.get("SAMPLE_VIDEOS", ROOT.parent / "shared" / "data"))
SHOTS = [  # camera, file, frames scored per second
    ("Campus path", "vtest.avi", 1.0),
    ("Street, traffic", "bikes.mp4", 5.0),
    ("Desk, box", "box.mp4", 4.0),
    ("Desk, cup", "cup.mp4", 6.0),
]


@pytest.mark.skipif(not os.environ.get("SCREENSHOTS"), reason="set SCREENSHOTS=1 to write it")
def test_it_screenshots_the_wall(tmp_path, wall_env):
    """docs/screenshot-wall.png: four real videos analysed by the worker (tiny random CLIP,
    so the scores mean nothing; the layout is what is shown)."""
    watcher = UserFactory(username="operator")
    analyses = []
    for name, file, fps in SHOTS:
        source = tmp_path / file
        shutil.copy(SAMPLES / file, source)
        camera = CameraFactory(name=name, kind="file", source=str(source), viewers=[watcher])
        analyses.append(
            AnalysisFactory(
                camera=camera,
                name="Anything unusual",
                status="queued",
                sampling_fps=fps,
                localize=True,
                # With the tiny random model this pair scores on both sides of 0.6.
                normal_prompts="a pedestrian crossing",
                anomaly_prompts="a crowd running",
            )
        )
    wall = Wall(tmp_path, wall_env)
    # A soft softmax: the tiny model's own scale saturates every score at 1.000 on these.
    env = {**wall_env, "DETECTION_LOGIT_SCALE": "6"}
    worker = start_worker(env, "--once", "--batch-size", "4")
    try:
        assert worker.wait(timeout=600) == 0, worker.stdout.read()[-3000:]
        wall.browse(watcher)
        wall.driver.execute_cdp_cmd(  # the viewport itself, whatever the window's frame
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        keys = [str(a.pk) for a in analyses]
        wall.until(
            lambda s: all(s["analyses"][k]["loaded"] and s["analyses"][k]["indexes"] for k in keys),
            "every card's frame and chart",
        )
        shot = tmp_path / "wall.png"
        wall.driver.save_screenshot(str(shot))
        target = ROOT / "docs" / "screenshot-wall.png"
        shutil.copy(shot, target)
        print(f"\nwrote {target} ({target.stat().st_size // 1024} KiB)")
    finally:
        stop(worker)
        wall.close()
        print(tail(tmp_path / "daphne.log", 5))
