"""The analysis page in a real Chromium (issue 14, items 4, 7, 8 on the analysis page).

- A completed file analysis of a real video: clicking a chart point shows that very frame,
  incident ranges are shaded (the boxes the chart plugin drew), metadata is collapsed with
  human labels. Its screenshot is docs/screenshot-explore.png (EXPLORE_SCREENSHOT=path).
- A live camera (an MJPEG stream served here, a real `run_detector`, real daphne): the live
  picture updates several times a second, the worker stops writing it once nobody watches,
  "page connected" and "camera streaming" are two indicators, and the camera's error shows
  (without the password in the stream URL) when the stream dies.
- Without a browser: a password in a stream URL never reaches the page or its socket, and
  the worker's phase shows beside the status.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from django.urls import reverse

from detection.engine.sources import Backoff
from detection.frames import live_picture_path
from detection.live.consumers import snapshot
from detection.live.publisher import NullPublisher
from detection.worker import preview
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory, IncidentFactory, UserFactory
from tests.support.html import parse
from tests.support.processes import migrate_channels, start_daphne, start_worker, stop
from tests.support.sessions import login, session_key
from tests.support.streams import MJPEGServer, free_port, wait_for_port
from tests.support.waiting import wait_until

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
SAMPLE = Path("/work/shared/data/bikes.mp4")
PASSWORD = "s3cret-Pa55"

READ = """
const canvas = document.getElementById("score-chart");
const chart = window.Chart && canvas ? window.Chart.getChart(canvas) : null;
const q = (r) => document.querySelector(`[data-role="${r}"]`);
const explore = q("explore"), picture = q("picture-figure"), img = q("explore-image");
const details = q("metadata");
return {
  points: chart ? chart.data.datasets[0].data.length : 0,
  boxes: chart && chart.$incidentBoxes
    ? chart.$incidentBoxes.map((b) => [b.id, b.right - b.left]) : [],
  explore: explore && !explore.hidden ? explore.dataset.state : null,
  exploreFrame: explore ? explore.dataset.frame : null,
  exploreCaption: q("explore-caption") ? q("explore-caption").textContent : "",
  exploreSize: img && img.complete ? [img.naturalWidth, img.naturalHeight] : null,
  metadataOpen: details ? details.open : null,
  pictures: picture ? Number(picture.dataset.count) : null,
  page: q("live-state") ? q("live-state").dataset.state : null,
  camera: q("camera-indicator") ? q("camera-indicator").dataset.state : null,
  cameraText: q("camera-indicator") ? q("camera-indicator").textContent : null,
  error: q("camera-error-line") && !q("camera-error-line").hidden
    ? q("camera-error").textContent : "",
};
"""

# Click score point `k` (dataset 0) where the chart drew it.
POINT = """
const chart = window.Chart.getChart(document.getElementById("score-chart"));
const el = chart.getDatasetMeta(0).data[arguments[0]];
const box = chart.canvas.getBoundingClientRect();
return [el.x - box.width / 2, el.y - box.height / 2, chart.data.datasets[0].data[arguments[0]].i];
"""


def click_point(driver, k: int) -> int:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    x, y, frame = driver.execute_script(POINT, k)
    canvas = driver.find_element(By.ID, "score-chart")
    ActionChains(driver).move_to_element_with_offset(canvas, int(x), int(y)).click().perform()
    return frame


def browser(tmp_path: Path, name: str):
    from tests.web.test_browser import new_browser

    return new_browser(tmp_path / f"profile-{name}")


@pytest.fixture
def site(tmp_path, subprocess_env):
    env = {
        **subprocess_env,
        "CHANNELS_LAYER": "sqlite",
        "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3"),
    }
    migrate_channels(env)
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    try:
        wait_for_port(port)
        yield env, f"http://127.0.0.1:{port}"
    finally:
        stop(server, signal.SIGKILL)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tiny_settings")
@pytest.mark.parametrize("_", [None], ids=["file"])
@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} is missing")
def test_it_shows_the_clicked_frame_of_a_file_with_shaded_incidents(_, tmp_path, site):
    from detection.web.metadata import LABELS

    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip("no headless browser")
    _env, base = site
    viewer = UserFactory(username="viewer")
    video = shutil.copy(SAMPLE, tmp_path / "bikes.mp4")
    camera = CameraFactory(name="Bike lane", kind="file", source=str(video), viewers=[viewer])
    analysis = AnalysisFactory(
        camera=camera,
        name="Bike lane, afternoon",
        status="queued",
        sampling_fps=2.0,
        threshold=0.9,  # the tiny random model scores high on this clip
        normal_prompts="cyclists riding in a bike lane",
        anomaly_prompts="a cyclist falling off a bike",
    )
    Worker(once=True, publisher=NullPublisher(), analysis_id=analysis.pk).run()
    analysis.refresh_from_db()
    assert analysis.status == "completed", analysis.error_message
    # Two incidents to shade (the tiny random model's own are left to chance).
    for start, end in ((2.0, 3.5), (6.0, 7.0)):
        IncidentFactory(analysis=analysis, start_time_s=start, end_time_s=end, peak_time_s=start)
    incidents = sorted(analysis.incidents.values_list("pk", flat=True))

    driver = browser(tmp_path, "viewer")
    try:
        driver.get(f"{base}/accounts/login/")
        driver.add_cookie({"name": "sessionid", "value": session_key(viewer), "path": "/"})
        driver.get(f"{base}{analysis.get_absolute_url()}")
        state = wait_until(
            lambda: (s := driver.execute_script(READ))["points"] and s, 30, "the chart"
        )
        assert state["points"] == analysis.frames_scored
        assert sorted(i for i, _ in state["boxes"]) == incidents, state["boxes"]
        assert all(width > 5 for _, width in state["boxes"]), state["boxes"]
        assert state["metadataOpen"] is False
        assert state["explore"] is None

        frame = click_point(driver, 7)
        state = wait_until(
            lambda: (s := driver.execute_script(READ))["explore"] == "shown" and s,
            30,
            "the clicked frame",
            lambda: str(driver.execute_script(READ)),
        )
        assert state["exploreFrame"] == str(frame)
        assert state["exploreCaption"].startswith(f"Frame {frame} at "), state["exploreCaption"]
        assert state["exploreSize"][0] == 640, state["exploreSize"]  # its own 640 x 272
        text = driver.find_element("css selector", "details.metadata").text
        assert "Metadata" in text and LABELS["total_frames"][0] not in text  # collapsed

        shot = tmp_path / "explore.png"
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shot))
        target = os.environ.get("EXPLORE_SCREENSHOT")
        if target:
            shutil.copy(shot, target)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tiny_settings")
@pytest.mark.browser
@pytest.mark.slow
def test_it_shows_the_live_picture_only_while_watched_and_the_cameras_error(tmp_path, site):
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip("no headless browser")
    env, base = site
    viewer = UserFactory(username="viewer")
    with MJPEGServer(fps=10) as camera_server:
        url = camera_server.url.replace("http://", f"http://cam:{PASSWORD}@")
        camera = CameraFactory(name="Loading bay", kind="stream", source=url, viewers=[viewer])
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=2.0, motion_gating=False
        )
        picture = live_picture_path(analysis.pk)
        worker = start_worker(env, "--batch-size", "2")
        driver = browser(tmp_path, "viewer")
        try:
            driver.get(f"{base}/accounts/login/")
            driver.add_cookie({"name": "sessionid", "value": session_key(viewer), "path": "/"})
            page = f"{base}{analysis.get_absolute_url()}"
            driver.get(page)
            read = lambda: driver.execute_script(READ)  # noqa: E731
            first = wait_until(lambda: (s := read())["pictures"] >= 2 and s, 90, "live pictures")
            started = time.monotonic()
            later = wait_until(
                lambda: (s := read())["pictures"] >= first["pictures"] + 8 and s,
                20,
                "8 more live pictures",
            )
            rate = (later["pictures"] - first["pictures"]) / (time.monotonic() - started)
            print(f"live picture: {rate:.1f} pictures/s in the browser")
            assert rate >= 2.0, rate  # several a second (4 at best)
            state = wait_until(
                lambda: (s := read())["camera"] == "streaming" and s, 30, "streaming"
            )
            assert state["page"] == "live" and state["error"] == ""

            # Nobody watches: the worker stops writing within WATCH_S and a check.
            driver.get(f"{base}/accounts/login/")
            left = time.monotonic()

            def settled():
                before = picture.stat().st_mtime_ns
                time.sleep(1.5)
                return picture.stat().st_mtime_ns == before

            wait_until(settled, preview.WATCH_S + 20, "the worker to stop writing the picture")
            print(f"live picture: stopped {time.monotonic() - left:.1f} s after the page left")
            stopped = picture.stat().st_mtime_ns
            time.sleep(2)
            assert picture.stat().st_mtime_ns == stopped

            # Back, then the stream dies: the error shows, the page stays connected.
            driver.get(page)
            wait_until(lambda: read()["pictures"] >= 1, 30, "the picture again")
            camera_server.stop()
            state = wait_until(
                lambda: (s := read())["error"] and s["camera"] != "streaming" and s,
                60,
                "the camera's error",
                lambda: str(read()),
            )
            assert state["page"] == "live", state
            wait_until(lambda: "cannot open" in read()["error"], 60, "the open error")
            assert PASSWORD not in driver.page_source
            assert "cam:***@" in read()["error"] or "cam:" not in read()["error"]
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            # A 404 while the picture waits for the camera is expected; nothing else.
            assert all("picture.jpg" in e["message"] for e in errors), errors
        finally:
            driver.quit()
            stop(worker)


# --- without a browser ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("tiny_settings", "media")
@pytest.mark.slow
def test_it_never_shows_the_password_of_a_stream_url(client, viewer):
    port = free_port()  # nothing listens: every open fails, naming the URL
    camera = CameraFactory(
        kind="stream", source=f"http://cam:{PASSWORD}@127.0.0.1:{port}/live", viewers=[viewer]
    )
    analysis = AnalysisFactory(camera=camera, status="queued", motion_gating=False)
    fast = {
        "open_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "backoff": Backoff(initial_s=0.1, cap_s=0.2, jitter=0.0, max_failures=50),
    }
    worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, source_options=fast)
    try:

        def failed() -> bool:
            worker.tick()
            camera.refresh_from_db()
            return "cannot open" in camera.last_error

        wait_until(failed, 30, "the camera's open error", every=0.05)
    finally:
        worker.shutdown()
    assert PASSWORD not in camera.last_error and "cam:***@" in camera.last_error
    content = login(client, viewer).get(analysis.get_absolute_url()).content.decode()
    assert PASSWORD not in content
    line = parse(content).one(data_role="camera-error-line")
    assert line.get("hidden") is None and "cannot open" in line.text
    message = snapshot(viewer, analysis.pk, None)
    assert message["last_error"] == camera.last_error
    assert PASSWORD not in str(message)


@pytest.mark.django_db
def test_it_shows_the_phase_and_error_beside_the_status(client, viewer, media):
    camera = CameraFactory(kind="stream", viewers=[viewer], status="offline", last_error="")
    analysis = AnalysisFactory(
        camera=camera,
        status="running",
        metadata={"phase": "loading model"},
        error_message="",
    )
    page = parse(login(client, viewer).get(analysis.get_absolute_url()).content.decode())
    phase = page.one(data_role="phase")
    assert phase.text == "loading model" and phase.get("hidden") is None
    assert page.one(data_role="camera-error-line").get("hidden") is not None
    # Two labelled indicators: the page's socket, and the camera's frames.
    labels = [span.text for span in page.find_all("span", class_="indicator-label")]
    assert labels == ["Page", "Camera"]
    assert page.one(data_role="live-state") and page.one(data_role="camera-indicator")
    root = page.one(id="analysis-page")
    assert root["data-camera-streaming"] == "false"
    assert page.one(data_role="picture-figure")["data-url"] == reverse(
        "detection:live_picture", args=[analysis.pk]
    )

    failed = AnalysisFactory(camera=camera, status="failed", error_message="weights missing")
    page = parse(client.get(failed.get_absolute_url()).content.decode())
    assert page.one("p", data_role="error").text == "weights missing"
    assert page.one(data_role="phase").get("hidden") is not None
