"""Two users watch one running analysis live in headless Chromium; a third is refused.

Real daphne + real `run_detector` (separate processes, the embedded SQLite channel layer) +
real browsers logged in with real session cookies. The test checks what issue 5 calls done:

- alice and bob, both viewers of the camera, each see the chart gain points and the frame
  image change while the worker scores;
- carol, not shared, gets a 404 page for the analysis and her socket is closed with 4404
  (or 4403) before anything is sent;
- daphne is killed and restarted on the same port while the worker keeps scoring: the pages
  show "reconnecting", resume, and at the end hold exactly the frame indexes stored in the
  database (the analysis window is larger than the run, so the chart keeps every point).

A screenshot of alice's page is saved to `tmp_path/live.png`; when the environment variable
BROWSER_ARTIFACTS names a folder, it is copied there too (CI keeps it as an artifact).

Debian's chromium and chromedriver are used from /usr/bin (Selenium Manager never downloads
anything) and every host but 127.0.0.1 is unresolvable for the browsers. Without a driver the
module is skipped, unless TEST_BROWSER is set (CI sets it): then a missing driver fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detection.models import Analysis, FrameScore
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory
from tests.support.processes import migrate_channels, start_daphne, stop
from tests.support.sessions import session_key
from tests.support.streams import free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.browser,
    pytest.mark.slow,
]

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("TEST_BROWSER", "") not in ("", "0")

if not REQUIRED and not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
    pytest.skip(
        f"no headless browser: {CHROMEDRIVER} or {CHROMIUM} is missing "
        "(apt-get install chromium chromium-driver; set TEST_BROWSER=1 to make this an error)",
        allow_module_level=True,
    )
if not REQUIRED:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

FRAMES = 600  # 60 s of video at 10 fps, sampled at 5 fps: 300 scores
SAMPLING_FPS = 5.0
WORKER_ARGS = ("--poll", "0.2", "--batch-size", "2")
WINDOW = 1000  # bigger than the run: the live chart keeps every point

# Chart state read from the page: frame indexes held, the live state, the analysis status.
READ_PAGE = """
const canvas = document.getElementById("score-chart");
const chart = window.Chart && canvas ? window.Chart.getChart(canvas) : null;
const img = document.querySelector('[data-role="frame"]');
const state = document.querySelector('[data-role="live-state"]');
const root = document.getElementById("analysis-page");
return {
  indexes: chart ? chart.data.datasets[0].data.map((p) => p.i) : null,
  threshold: chart ? chart.data.datasets[1].data.length : 0,
  src: img ? img.getAttribute("src") : null,
  loaded: img ? img.complete && img.naturalWidth > 0 && !img.hidden : false,
  state: state ? state.dataset.state : null,
  incidents: Array.from(
    document.querySelectorAll('[data-role="incidents"] tr[data-incident-id]'),
    (row) => [Number(row.dataset.incidentId), row.classList.contains("open")],
  ),
  status: root ? root.dataset.status : null,
};
"""

# The HTTP status of a same-origin GET (WebDriver does not expose the page's own).
FETCH_STATUS = """
const [url, done] = arguments;
fetch(url, {credentials: "same-origin"}).then((r) => done(r.status), (e) => done(String(e)));
"""

# Open the analysis socket from any page of the site; report how it ends.
TRY_SOCKET = """
const [url, done] = arguments;
let received = 0;
const ws = new WebSocket(url);
ws.onmessage = () => { received += 1; };
ws.onclose = (event) => done({code: event.code, received});
setTimeout(() => done({code: null, received}), 10000);
"""


def new_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMEDRIVER.exists(), f"TEST_BROWSER is set but {CHROMEDRIVER} is missing"
    assert CHROMIUM.exists(), f"TEST_BROWSER is set but {CHROMIUM} is missing"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for uncaught JS errors
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--window-size=1400,1000",
        # Nothing but the test server resolves: the browser cannot reach anything else.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(20)
    return driver


def log_in(driver, base: str, key: str) -> None:
    driver.get(f"{base}/accounts/login/")  # the cookie's domain is the page's
    driver.add_cookie({"name": "sessionid", "value": key, "path": "/"})


def stored_indexes(analysis_id: int) -> list[int]:
    return list(
        FrameScore.objects.filter(analysis_id=analysis_id)
        .order_by("frame_index")
        .values_list("frame_index", flat=True)
    )


def test_two_viewers_watch_live_a_third_is_refused_a_reconnect_loses_nothing(
    tmp_path, make_video, subprocess_env
):
    env = {
        **subprocess_env,
        "CHANNELS_LAYER": "sqlite",
        "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3"),
    }
    migrate_channels(env)

    alice, bob, carol = (UserFactory(username=name) for name in ("alice", "bob", "carol"))
    clip = make_video("street.avi", frames=FRAMES, fps=10.0)
    camera = CameraFactory(
        name="Street corner", kind="file", source=str(clip), viewers=[alice, bob]
    )
    analysis = AnalysisFactory(
        camera=camera,
        name="Street corner, evening",
        status="queued",
        sampling_fps=SAMPLING_FPS,
        window_size=WINDOW,
        # With the tiny random model this pair scores around the threshold (0.03..0.87 on
        # this clip), so the chart crosses it and incidents open and close.
        normal_prompts="a pedestrian crossing",
        anomaly_prompts="a crowd running",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    page = f"{base}/analyses/{analysis.pk}/"
    worker_log = (tmp_path / "worker.log").open("w")

    def serve() -> subprocess.Popen:
        server = start_daphne(env, port, tmp_path / "daphne.log")
        try:
            wait_for_port(port)
        except AssertionError:
            stop(server, signal.SIGKILL)
            raise
        return server

    server = worker = None
    drivers = []

    def browser(name: str):
        drivers.append(new_browser(tmp_path / f"profile-{name}"))
        return drivers[-1]

    t0 = time.monotonic()
    try:
        server = serve()
        viewers = {}
        for user in (alice, bob):
            driver = browser(user.username)
            log_in(driver, base, session_key(user))
            driver.get(page)
            viewers[user.username] = driver
        read = {name: (lambda d=d: d.execute_script(READ_PAGE)) for name, d in viewers.items()}
        for name in viewers:
            first = wait_until(
                lambda n=name: _live(read[n]()), 30, f"{name}'s page to go live", every=0.1
            )
            assert first["indexes"] == [], f"{name}: points before the worker ran: {first}"
            assert first["status"] == "queued"

        worker = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_detector", "--once", *WORKER_ARGS],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=worker_log,
        )
        t_worker = time.monotonic()

        # Both pages gain points and see the frame image change, live.
        frames_seen: dict[str, set[str]] = {name: set() for name in viewers}

        def progressing(name: str):
            state = read[name]()
            if state["loaded"] and state["src"]:
                frames_seen[name].add(state["src"])
            ok = len(state["indexes"]) >= 10 and len(frames_seen[name]) >= 2
            return state if ok else None

        for name in viewers:
            state = wait_until(
                lambda n=name: progressing(n), 30, f"{name}'s chart and frame to move", every=0.1
            )
            assert state["status"] == "running", state
            assert state["state"] == "live", state
            assert state["threshold"] == 2, "no threshold line"
            assert all("/frame.jpg?v=" in src for src in frames_seen[name]), frames_seen[name]
        t_live = time.monotonic()

        # Kill daphne mid-run; the worker keeps scoring into the database meanwhile.
        assert Analysis.objects.get(pk=analysis.pk).status == "running", "the run ended too soon"
        before_kill = {name: len(read[name]()["indexes"]) for name in viewers}
        server.kill()
        server.wait(timeout=10)
        t_kill = time.monotonic()
        for name in viewers:
            wait_until(
                lambda n=name: _reconnecting(read[n]()),
                30,
                f"{name}'s page to show it reconnects",
                every=0.1,
            )
        # Scores stored while nothing serves them: only the database can hand them over.
        stored_at_kill = len(stored_indexes(analysis.pk))
        wait_until(
            lambda: len(stored_indexes(analysis.pk)) >= stored_at_kill + 10,
            20,
            "scores stored during the outage",
            every=0.1,
        )
        server = serve()
        stored_at_restart = len(stored_indexes(analysis.pk))
        assert worker.poll() is None, "the worker finished before daphne came back"
        for name in viewers:
            wait_until(
                lambda n=name: _resumed(read[n](), stored_at_restart),
                30,
                f"{name}'s page to resume",
                every=0.1,
            )
        t_resumed = time.monotonic()

        # A screenshot of the live page with plenty of points (for the README too).
        wait_until(
            lambda: len(read["alice"]()["indexes"]) >= 150 or worker.poll() is not None,
            60,
            "a well-filled chart",
            every=0.1,
        )
        shot = tmp_path / "live.png"
        viewers["alice"].save_screenshot(str(shot))
        if os.environ.get("BROWSER_ARTIFACTS"):
            artifacts = Path(os.environ["BROWSER_ARTIFACTS"])
            artifacts.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, artifacts / "live.png")

        # Carol, not shared, is refused: a 404 page, and a socket closed before any message.
        intruder = browser("carol")
        log_in(intruder, base, session_key(carol))
        intruder.get(page)
        assert "not found" in intruder.title.lower(), intruder.title
        status = intruder.execute_async_script(FETCH_STATUS, page)
        assert status == 404, status
        assert "Street corner" not in intruder.page_source
        ws_url = f"ws://127.0.0.1:{port}/ws/analyses/{analysis.pk}/"
        refused = intruder.execute_async_script(TRY_SOCKET, ws_url)
        assert refused["code"] in (4404, 4403), refused
        assert refused["received"] == 0, refused
        drivers.remove(intruder)
        intruder.quit()

        # The run ends; each page holds exactly what the database holds.
        assert worker.wait(timeout=120) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        t_done = time.monotonic()
        final = Analysis.objects.get(pk=analysis.pk)
        assert final.status == "completed", final.error_message
        stored = stored_indexes(analysis.pk)
        assert len(stored) == FRAMES // 2
        incidents = [
            [pk, False] for pk in final.incidents.order_by("pk").values_list("pk", flat=True)
        ]
        assert incidents, "no incident opened: the prompts no longer cross the threshold"
        for name in viewers:
            state = wait_until(
                lambda n=name: (
                    (s := read[n]())["status"] == "completed"
                    and len(s["indexes"]) >= len(stored)
                    and s
                ),
                20,
                f"{name}'s page to finish",
                every=0.1,
            )
            assert state["indexes"] == stored, f"{name}'s page differs from the database"
            assert sorted(state["incidents"]) == incidents, f"{name}: {state['incidents']}"
            errors = [
                e["message"] for e in viewers[name].get_log("browser") if "Uncaught" in e["message"]
            ]
            assert not errors, f"{name}'s page threw: {errors}"
        print(
            f"\nbrowser test: live after {t_live - t_worker:.1f} s of scoring, "
            f"daphne down {t_resumed - t_kill:.1f} s (pages held {before_kill}, "
            f"{stored_at_restart} stored at restart), {len(stored)} points, "
            f"worker ran {t_done - t_worker:.1f} s, "
            f"total {time.monotonic() - t0:.1f} s"
        )
    finally:
        for driver in drivers:
            try:
                driver.quit()
            except Exception:  # noqa: BLE001 - a dead browser must not hide the real failure
                pass
        stop(worker)
        stop(server)
        worker_log.close()


def _live(state: dict) -> dict | None:
    return state if state["state"] == "live" and state["indexes"] is not None else None


def _reconnecting(state: dict) -> bool:
    return state["state"] in ("reconnecting", "connecting")


def _resumed(state: dict, stored_at_restart: int) -> bool:
    # Live again, and holding everything scored while daphne was down (from the database).
    return state["state"] == "live" and len(state["indexes"]) >= stored_at_restart
