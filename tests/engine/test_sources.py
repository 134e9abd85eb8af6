"""Live frame sources against real local servers: frames, staleness, timeouts, reconnects."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from detection.api import analyze_stream, compute_anomaly_scores
from detection.engine.sources import (
    Backoff,
    LiveSource,
    PacedFileSource,
    SourceError,
    SourceStatus,
    StreamSource,
    WebcamSource,
    open_source,
    redact,
)
from tests.support.sources import Recorder
from tests.support.streams import MJPEGServer, StalledServer, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

POLL = 0.01  # sources change state within milliseconds: look often
FAST = Backoff(initial_s=0.05, cap_s=0.2, jitter=0.0, max_failures=3, max_opens=100, per_s=1.0)


@pytest.fixture
def server() -> Iterator[MJPEGServer]:
    with MJPEGServer(fps=25) as s:
        yield s


def stream(sources: list[LiveSource], url: str, **options) -> StreamSource:
    options = {"open_timeout_s": 1.0, "read_timeout_s": 0.5, "backoff": FAST, **options}
    source = StreamSource(url, **options)
    sources.append(source)
    return source


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_it_reads_frames_from_an_mjpeg_stream(server, sources):
    recorder = Recorder()
    source = stream(sources, server.url, on_status=recorder).start()
    first = source.latest(timeout=3.0)
    # Not necessarily frame 0: on a loaded machine the reader may store frame 1 before this
    # thread asks, and `latest` hands out the newest (the flaky `== 0` it once asserted).
    assert first is not None and first.index >= 0
    assert first.image.dtype == np.uint8 and first.image.shape == (120, 160, 3)
    assert first.captured_at.tzinfo is UTC
    assert abs((datetime.now(UTC) - first.captured_at).total_seconds()) < 1.0
    second = source.latest(timeout=1.0)
    assert second is not None and second.index > first.index
    assert second.time_s > first.time_s >= 0
    assert source.status is SourceStatus.ONLINE and source.last_error == ""
    assert recorder.events == [(SourceStatus.ONLINE, "")]
    assert [t.name for t in threading.enumerate()].count(f"source:{server.url}") == 1
    assert source.stop() is True
    assert source.status is SourceStatus.OFFLINE and not source.running


def test_it_hands_a_slow_consumer_the_newest_frame_not_a_backlog(sources):
    with MJPEGServer(fps=50) as server:
        source = stream(sources, server.url).start()
        first = source.latest(timeout=3.0)
        assert first is not None
        time.sleep(0.4)  # a slow scorer: ~20 frames arrive meanwhile
        frame = source.latest(timeout=1.0)
        assert frame is not None
        assert frame.index - first.index >= 8  # it skipped ahead ...
        age = datetime.now(UTC) - frame.captured_at
        assert age.total_seconds() < 0.15  # ... to a fresh frame
        # Each frame is handed out once: right after, there is nothing newer yet.
        again = source.latest(timeout=0.0)
        assert again is None or again.index > frame.index


def test_it_reconnects_when_the_server_dies_and_comes_back(server, sources):
    recorder = Recorder()
    source = stream(sources, server.url, on_status=recorder).start()
    assert source.latest(timeout=3.0) is not None
    server.stop()
    wait_until(
        lambda: source.status is not SourceStatus.ONLINE,
        3.0,
        "source.status is not SourceStatus.ONLINE",
        every=POLL,
    )
    assert source.status in (SourceStatus.RECONNECTING, SourceStatus.OFFLINE)
    assert source.last_error
    while source.latest(timeout=0.0) is not None:  # frames read before the drop
        pass
    assert source.latest(timeout=0.3) is None
    server.start()  # same port
    frame = source.latest(timeout=3.0)
    assert frame is not None
    wait_until(
        lambda: source.status is SourceStatus.ONLINE,
        1.0,
        "source.status is SourceStatus.ONLINE",
        every=POLL,
    )
    assert source.reconnects == 1 and source.last_error == ""
    assert recorder.statuses[0] is SourceStatus.ONLINE
    assert recorder.statuses[1] is SourceStatus.RECONNECTING
    assert recorder.statuses[-1] is SourceStatus.ONLINE
    assert "ended or the connection dropped" in recorder.events[1][1]


def test_it_times_out_on_a_server_that_never_answers(sources):
    before_py, before_native = threading.active_count(), native_threads()
    recorder = Recorder()
    with StalledServer() as stalled:
        source = stream(
            sources, stalled.url, open_timeout_s=0.2, read_timeout_s=0.2, on_status=recorder
        ).start()
        wait_until(
            lambda: SourceStatus.OFFLINE in recorder.statuses,
            4.0,
            "SourceStatus.OFFLINE in recorder.statuses",
            every=POLL,
        )
        assert source.latest(timeout=0.0) is None
        assert "no answer within 0.2 s" in source.last_error
        assert recorder.statuses[:2] == [SourceStatus.RECONNECTING, SourceStatus.OFFLINE]
        # More failed attempts add no threads: one reader thread, whatever happens.
        attempts, during = source.open_attempts, native_threads()
        wait_until(
            lambda: source.open_attempts >= attempts + 3,
            4.0,
            "source.open_attempts >= attempts + 3",
            every=POLL,
        )
        assert threading.active_count() <= before_py + 3  # reader, accept loop, a client
        assert native_threads() <= during + 1
        assert source.stop() is True
    assert threading.active_count() == before_py
    # Joined threads leave the OS task list a moment later.
    wait_until(
        lambda: native_threads() <= before_native,
        1.0,
        "native_threads() <= before_native",
        every=POLL,
    )


def test_it_times_out_on_a_stream_that_stalls_after_some_frames(sources):
    with MJPEGServer(fps=50, stall_after=3) as stalled:
        source = stream(sources, stalled.url, read_timeout_s=0.3).start()
        assert source.latest(timeout=3.0) is not None
        started = time.monotonic()
        wait_until(
            lambda: source.status is not SourceStatus.ONLINE,
            3.0,
            "source.status is not SourceStatus.ONLINE",
            every=POLL,
        )
        assert time.monotonic() - started < 1.5
        assert "no frame within 0.3 s" in source.last_error


def test_it_goes_offline_when_nothing_listens_and_retries_slowly(sources):
    recorder = Recorder()
    backoff = Backoff(initial_s=0.05, cap_s=0.4, jitter=0.0, max_failures=3)
    source = stream(
        sources, f"http://127.0.0.1:{free_port()}/live", backoff=backoff, on_status=recorder
    ).start()
    time.sleep(1.5)
    assert source.status is SourceStatus.OFFLINE
    assert "connection refused" in source.last_error
    assert recorder.statuses == [SourceStatus.RECONNECTING, SourceStatus.OFFLINE]
    # Waits 0.05, 0.1, then the 0.4 s cap once offline: about 5 attempts, not a busy loop.
    assert 3 <= source.open_attempts <= 7
    assert source.reconnects == 0


def test_it_rate_limits_reopening_a_flapping_camera(sources):
    # Each connection sends two frames and hangs up: every reopen "succeeds", so backoff
    # alone would reopen at once, forever. The rate limit holds it to 4 opens a second.
    limit = Backoff(initial_s=0.01, cap_s=0.02, jitter=0.0, max_failures=3, max_opens=4, per_s=1.0)
    with MJPEGServer(fps=100, frames_per_connection=2) as flapping:
        source = stream(sources, flapping.url, backoff=limit).start()
        time.sleep(1.6)
        source.stop()
        assert 3 <= flapping.connections <= 8
        assert source.open_attempts == flapping.connections
        assert source.reconnects >= 3


def test_it_survives_a_server_restarted_many_times(server, sources):
    source = stream(sources, server.url).start()
    assert source.latest(timeout=3.0) is not None
    for _ in range(5):
        server.restart()
        time.sleep(0.05)
    assert source.latest(timeout=3.0) is not None
    wait_until(
        lambda: source.status is SourceStatus.ONLINE,
        1.0,
        "source.status is SourceStatus.ONLINE",
        every=POLL,
    )
    assert 1 <= source.reconnects <= 6
    assert source.open_attempts <= 12


def test_it_stops_at_once_during_a_long_backoff(sources):
    slow = Backoff(initial_s=10.0, cap_s=60.0, jitter=0.0)
    source = stream(sources, f"http://127.0.0.1:{free_port()}/", backoff=slow).start()
    wait_until(
        lambda: source.status is SourceStatus.RECONNECTING,
        3.0,
        "source.status is SourceStatus.RECONNECTING",
        every=POLL,
    )
    started = time.monotonic()
    assert source.stop() is True
    assert time.monotonic() - started < 1.0
    assert not source.running and source.status is SourceStatus.OFFLINE


def test_it_plays_a_file_in_real_time_and_loops(make_video, sources):
    path = make_video("loop.avi", frames=8, fps=10.0)
    source = PacedFileSource(path)
    sources.append(source)
    started = time.monotonic()
    source.start()
    first = source.latest(timeout=2.0)
    assert first is not None and source.status is SourceStatus.ONLINE
    frames = {first.index: first}
    while time.monotonic() - started < 1.5:
        if (frame := source.latest(timeout=0.5)) is not None:
            frames[frame.index] = frame
    # At 10 fps frame k is read at ~k / 10 s: about 10 frames in the first second. The
    # 8-frame file loops without a pause, and its first frame comes round again.
    assert all(abs(f.time_s - f.index / 10.0) < 0.15 for f in frames.values())
    assert 13 <= max(frames) + 1 <= 16
    again = [k for k in frames if k >= 8 and k - 8 in frames]
    assert again and all(np.array_equal(frames[k].image, frames[k - 8].image) for k in again)
    assert source.reconnects == 0 and source.open_attempts == 1


def test_it_ends_a_file_played_once_and_fails_an_unreadable_one(make_video, tmp_path, sources):
    once = PacedFileSource(make_video("once.mp4", frames=3, fps=30.0), loop=False)
    sources.append(once)
    once.start()
    got = [f for _ in range(6) if (f := once.latest(timeout=0.5)) is not None]
    assert len(got) == 3
    wait_until(lambda: not once.running, 1.0, "not once.running", every=POLL)
    assert once.status is SourceStatus.OFFLINE and once.last_error == ""

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n")
    with pytest.raises(SourceError, match=r"junk\.mp4: this is a playlist"):
        PacedFileSource(junk)  # refused before FFmpeg sees it
    # A real MP4 header whose index is gone passes the content check, then cannot open.
    data = make_video("cut.mp4", frames=5).read_bytes()
    junk.write_bytes(data[: data.rfind(b"moov") - 4])
    bad = PacedFileSource(junk)
    sources.append(bad)
    bad.start()
    assert bad.latest(timeout=2.0) is None
    wait_until(lambda: not bad.running, 1.0, "not bad.running", every=POLL)
    assert bad.status is SourceStatus.FAILED and "junk.mp4" in bad.last_error


@pytest.mark.parametrize(
    "url",
    ["ftp://camera.local/live", "file:///etc/passwd", "camera.local/live", "http://", "", " "],
)
def test_it_refuses_what_is_not_a_stream_url(url):
    with pytest.raises(SourceError) as exc:
        StreamSource(url)
    assert isinstance(exc.value, ValueError)
    if url.startswith("ftp"):
        assert "rtsp, rtsps, http or https" in str(exc.value) and "'ftp'" in str(exc.value)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("rtsp://nvr:554/stream1", True),
        ("rtsp://cam_1.local/live", True),
        ("rtsps://cam.example.com/live", True),
        ("http://192.168.1.20/mjpg", True),
        ("rtsp://[fd12::5]/live", True),
        ("ftp://cam.local/live", False),
        ("rtsp://", False),
        ("http://cam..local/", False),
        ("http://a@b@10.0.0.5/", False),
        ("http://cam.local:99999/", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://[::ffff:169.254.169.254]/", False),
        ("http://0.0.0.0/", False),
        ("http://2130706433/", False),
    ],
)
def test_it_applies_the_admins_stream_url_rule_in_the_worker(url, accepted):
    from django.core.exceptions import ValidationError

    from cameras import validators

    try:
        validators.stream_url(url)
        admin_accepts = True
    except ValidationError:
        admin_accepts = False
    try:
        StreamSource(url)
        worker_accepts = True
    except SourceError:
        worker_accepts = False
    assert (admin_accepts, worker_accepts) == (accepted, accepted)


def test_it_defines_the_stream_schemes_once():
    from cameras import validators
    from detection.engine import netpolicy, sources

    assert sources.STREAM_SCHEMES is validators.STREAM_SCHEMES is netpolicy.STREAM_SCHEMES


def test_it_opens_the_workers_streams_under_the_portals_camera_policy(settings):
    # The worker calls open_source() without a policy: it gets the settings' one, which
    # cameras.validators installs in every Django process.
    from ipaddress import ip_network

    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = []  # production's default
    with pytest.raises(SourceError, match=r"a loopback address.*DETECTION_CAMERA_ALLOWED"):
        open_source("stream", "http://127.0.0.1:8080/live")
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = [ip_network("127.0.0.1/32")]
    assert open_source("stream", "http://127.0.0.1:8080/live").url == "http://127.0.0.1:8080/live"
    with pytest.raises(SourceError, match="cloud metadata"):
        open_source("stream", "http://169.254.169.254/latest/meta-data/")


def test_it_refuses_a_host_name_that_resolves_to_loopback_before_opening_it(server, sources):
    from detection.engine.netpolicy import camera_policy

    recorder = Recorder()
    strict = camera_policy()  # no network opened: loopback is refused
    source = stream(
        sources, f"http://localhost:{server.port}/", policy=strict, on_status=recorder
    ).start()
    wait_until(lambda: not source.running, 3.0, "not source.running", every=POLL)
    assert source.status is SourceStatus.FAILED, "a refused address is final, not retried"
    assert "localhost" in source.last_error and "a loopback address" in source.last_error
    assert server.connections == 0 and source.open_attempts == 1


def test_it_checks_the_resolved_address_again_before_each_open(monkeypatch, sources):
    from cameras import validators
    from tests.support.dns import resolve_as

    table = {"cam.example.net": ["10.0.0.8"]}
    resolve_as(monkeypatch, table)
    url = "rtsp://cam.example.net/live"
    assert validators.stream_url(url) == url  # registered while it pointed at the LAN
    table["cam.example.net"] = ["169.254.169.254"]  # then the DNS answer changed
    source = stream(sources, url).start()
    wait_until(lambda: not source.running, 3.0, "not source.running", every=POLL)
    assert source.status is SourceStatus.FAILED
    assert "169.254.169.254, a cloud metadata address" in source.last_error


def test_it_retries_a_camera_whose_name_does_not_resolve_yet(monkeypatch, sources):
    from tests.support.dns import resolve_as

    resolve_as(monkeypatch, {})
    source = stream(sources, "rtsp://nvr/live").start()
    wait_until(lambda: source.open_attempts >= 2, 3.0, "source.open_attempts >= 2", every=POLL)
    assert source.running and source.status is not SourceStatus.FAILED
    assert "'nvr' does not resolve" in source.last_error


def test_it_builds_sources_by_camera_kind_and_hides_passwords():
    source = open_source("stream", " rtsp://admin:secret@10.0.0.5:554/live ")
    assert (
        isinstance(source, StreamSource) and source.url == "rtsp://admin:secret@10.0.0.5:554/live"
    )
    assert "secret" not in source.name and "admin:***@10.0.0.5:554" in source.name
    assert redact("http://cam/live") == "http://cam/live"
    assert redact("rtsp://u:p@[::1]:8554/x") == "rtsp://u:***@[::1]:8554/x"
    webcam = open_source("webcam", "1")
    assert isinstance(webcam, WebcamSource) and webcam.index == 1
    assert not webcam.started and webcam.status is SourceStatus.OFFLINE
    for kind, value in [
        ("webcam", "-1"),
        ("webcam", "front"),
        ("webcam", "\u00b2"),  # isdigit() says yes, int() says no: a SourceError, not a crash
        ("file", "/x.mp4"),
        ("ptz", "0"),
    ]:
        with pytest.raises(SourceError):
            open_source(kind, value)
    with pytest.raises(SourceError, match="timeout"):
        StreamSource("http://cam/live", read_timeout_s=0)


def test_it_keeps_reading_when_the_status_callback_breaks(server, sources):
    def broken(status: SourceStatus, error: str) -> None:
        raise RuntimeError("database is down")

    source = stream(sources, server.url, on_status=broken).start()
    assert source.latest(timeout=3.0) is not None
    assert source.latest(timeout=1.0) is not None and source.running


NORMAL = ["a quiet street", "an empty corridor"]
ANOMALY = ["a fire", "a person lying on the floor"]


@pytest.mark.usefixtures("tiny_settings")
def test_it_scores_a_live_source_with_a_rolling_window(make_video):
    source = PacedFileSource(make_video("live.avi", frames=30, fps=20.0))
    items = list(
        analyze_stream(source, NORMAL, ANOMALY, 10.0, threshold=0.5, window_size=3, max_frames=5)
    )
    assert [i["status"] for i in items] == ["Success"] * 5
    assert [len(i["window"]) for i in items] == [1, 2, 3, 3, 3]
    assert items[-1]["window"] == [i["score"] for i in items[2:]]
    indexes = [i["frame_index"] for i in items]
    assert indexes == sorted(set(indexes))
    times = [i["time_s"] for i in items]
    assert times == sorted(times)
    assert (times[-1] - times[0]) / 4 >= 0.08  # never faster than 10 a second (slower if busy)
    for item in items:
        assert item["label"] == ("Anomaly" if item["score"] >= 0.5 else "Normal")
        assert 0.0 <= item["score"] <= 1.0
        assert item["score"] == pytest.approx(
            float(compute_anomaly_scores(item["normal"], item["anomaly"], 100.0)), abs=1e-4
        )
        assert item["source_status"] == "online" and item["random_weights"] is False
        assert datetime.fromisoformat(item["captured_at"]).tzinfo is not None
    assert not source.running  # the generator stopped its source


@pytest.mark.usefixtures("tiny_settings")
def test_it_stops_the_source_when_the_consumer_stops(make_video):
    source = PacedFileSource(make_video("live.avi", frames=30, fps=20.0))
    stream_ = analyze_stream(source, NORMAL, ANOMALY, 20.0, duration_s=10.0)
    assert next(stream_)["status"] == "Success"
    assert source.running
    stream_.close()
    assert not source.running


@pytest.mark.usefixtures("tiny_settings")
def test_it_stops_after_a_duration_and_reports_a_source_that_gives_up(make_video):
    source = PacedFileSource(make_video("live.avi", frames=30, fps=20.0))
    started = time.monotonic()
    items = list(analyze_stream(source, NORMAL, ANOMALY, 5.0, duration_s=0.7))
    assert 1 <= len(items) <= 4 and time.monotonic() - started < 2.5

    dead = StreamSource(
        f"http://127.0.0.1:{free_port()}/", open_timeout_s=0.2, read_timeout_s=0.2, backoff=FAST
    )
    items = list(analyze_stream(dead, NORMAL, ANOMALY, 5.0, duration_s=5.0))
    assert len(items) == 1 and items[0]["status"] == "Error"
    assert (
        "offline" in items[0]["error_message"] and "connection refused" in items[0]["error_message"]
    )
    assert not dead.running


@pytest.mark.usefixtures("tiny_settings")
@pytest.mark.parametrize(
    ("source", "normal", "kwargs", "message"),
    [
        ("http://127.0.0.1:9/", "", {}, "normal prompt is empty"),
        ("ftp://camera/live", NORMAL, {}, "'ftp'"),
        ("http://127.0.0.1:9/", NORMAL, {"sampling_rate_fps": 0}, "sampling rate"),
        ("http://127.0.0.1:9/", NORMAL, {"window_size": 0}, "window size"),
        ("http://127.0.0.1:9/", NORMAL, {"threshold": 1.5}, "threshold"),
        (True, NORMAL, {}, "not True"),
    ],
)
def test_it_yields_one_error_for_bad_input(source, normal, kwargs, message):
    items = list(analyze_stream(source, normal, ANOMALY, **kwargs))
    assert len(items) == 1 and items[0]["status"] == "Error"
    assert message in items[0]["error_message"]


@pytest.mark.usefixtures("tiny_settings")
def test_it_stops_a_caller_source_even_on_bad_input(server):
    source = StreamSource(server.url, backoff=FAST).start()
    items = list(analyze_stream(source, NORMAL, "   "))
    assert items[0]["status"] == "Error" and "anomaly prompt is empty" in items[0]["error_message"]
    assert not source.running
