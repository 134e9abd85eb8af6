"""StreamSource against a real RTSP camera (gst-rtsp-server, tests/support/rtsp.py): frames,
a sub-stream, a file mount, an outage and a hang, each followed by the camera's return."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest

from detection.engine.netpolicy import camera_policy
from detection.engine.sources import Backoff, LiveSource, SourceError, SourceStatus, StreamSource
from detection.engine.video import is_black
from tests.support.media import write_video
from tests.support.rtsp import LOOPBACK, MAIN, SUB, RtspServer
from tests.support.sources import Recorder
from tests.support.waiting import wait_until

# A real server and FFmpeg's RTSP probing (~1.2 s per open): a few seconds per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

POLL = 0.01
FAST = Backoff(initial_s=0.1, cap_s=0.5, jitter=0.0, max_failures=50, max_opens=100, per_s=1.0)


@pytest.fixture(scope="module")
def camera() -> Iterator[RtspServer]:
    """One camera for the tests that leave it running."""
    with RtspServer() as server:
        yield server


@pytest.fixture
def own_camera() -> Iterator[RtspServer]:
    """A camera of the test's own, to stop, pause and restart."""
    with RtspServer(sub=None) as server:
        yield server


def stream(sources: list[LiveSource], url: str, **options) -> StreamSource:
    # FFmpeg's default transport (RTP over UDP, control over TCP) is kept: on loopback no
    # packet is lost, and a dead server closes the control connection, which FFmpeg notices
    # at once; OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp" changed no timing here.
    # FFmpeg needs ~1.2 s to open an RTSP stream (DESCRIBE, SETUP, PLAY, then probing the
    # first keyframe): the open timeout leaves room for that on two busy cores.
    options = {"open_timeout_s": 5.0, "read_timeout_s": 1.0, "backoff": FAST, **options}
    source = StreamSource(url, policy=LOOPBACK, **options)
    sources.append(source)
    return source


def drain(source: StreamSource) -> None:
    while source.latest(timeout=0.0) is not None:
        pass


def test_it_reads_frames_from_an_rtsp_camera(camera, sources):
    recorder = Recorder()
    source = stream(sources, camera.url, on_status=recorder).start()
    first = source.latest(timeout=8.0)
    assert first is not None, camera.tail()
    width, height = MAIN
    assert first.image.dtype == np.uint8 and first.image.shape == (height, width, 3)
    assert not is_black(first.image)  # a decoded picture, not an empty buffer
    assert abs((datetime.now(UTC) - first.captured_at).total_seconds()) < 1.0
    # A live 25 fps stream: about 25 new frames a second, each one different (the ball moves).
    time.sleep(1.0)
    drain(source)
    started, frames, images = time.monotonic(), 0, []
    while time.monotonic() - started < 1.0:
        frame = source.latest(timeout=0.5)
        if frame is not None:
            frames += 1
            images.append(frame.image)
    assert 15 <= frames <= 30, frames
    assert not np.array_equal(images[0], images[-1])
    assert source.status is SourceStatus.ONLINE and source.last_error == ""
    assert recorder.events == [(SourceStatus.ONLINE, "")]
    assert source.stop() is True and source.status is SourceStatus.OFFLINE


def test_it_reads_the_cameras_lower_resolution_sub_stream(camera, sources):
    source = stream(sources, camera.sub_url).start()
    frame = source.latest(timeout=8.0)
    assert frame is not None, camera.tail()
    width, height = SUB
    assert frame.image.shape == (height, width, 3)


def test_it_refuses_an_rtsp_camera_on_loopback_unless_allowed():
    # The default camera policy (production's): loopback is refused before anything opens.
    with pytest.raises(SourceError, match="a loopback address"):
        StreamSource("rtsp://127.0.0.1:8554/cam", policy=camera_policy())
    assert StreamSource("rtsp://127.0.0.1:8554/cam", policy=LOOPBACK).url.startswith("rtsp:")


def test_it_notices_an_rtsp_outage_and_reconnects_when_the_camera_returns(own_camera, sources):
    recorder = Recorder()
    source = stream(sources, own_camera.url, on_status=recorder).start()
    assert source.latest(timeout=8.0) is not None, own_camera.tail()

    own_camera.stop()  # killed: the RTSP connection drops
    wait_until(
        lambda: source.status is not SourceStatus.ONLINE,
        5.0,
        "the source to notice the outage",
        every=POLL,
    )
    assert source.status in (SourceStatus.RECONNECTING, SourceStatus.OFFLINE)
    assert "ended or the connection dropped" in source.last_error
    drain(source)
    assert source.latest(timeout=1.0) is None  # nothing arrives while the camera is away
    # Reopening fails while nothing listens: the reason says so, and the source keeps trying.
    wait_until(
        lambda: "cannot open" in source.last_error,
        5.0,
        "a failed reopen",
        lambda: source.last_error,
        every=POLL,
    )
    assert "connection refused" in source.last_error
    attempts = source.open_attempts

    restarted = datetime.now(UTC)
    own_camera.start()  # same port
    frame = source.latest(timeout=10.0)
    assert frame is not None, own_camera.tail()
    wait_until(lambda: source.status is SourceStatus.ONLINE, 2.0, "online again", every=POLL)
    assert source.reconnects == 1 and source.last_error == ""
    assert source.open_attempts > attempts
    assert recorder.statuses[:2] == [SourceStatus.ONLINE, SourceStatus.RECONNECTING]
    assert recorder.statuses[-1] is SourceStatus.ONLINE
    assert frame.captured_at > restarted  # a new picture, not one held over from before


def test_it_times_out_on_an_rtsp_camera_that_hangs_and_recovers(own_camera, sources):
    source = stream(sources, own_camera.url, read_timeout_s=1.0).start()
    assert source.latest(timeout=8.0) is not None, own_camera.tail()

    own_camera.pause()  # connections stay open but nothing arrives: only a timeout notices
    paused = time.monotonic()
    wait_until(
        lambda: source.status is not SourceStatus.ONLINE,
        8.0,
        "the source to notice the hang",
        every=POLL,
    )
    # Measured: ~3 read timeouts, not one. After the first read times out, OpenCV drains
    # the H.264 decoder's delayed frames (frame threading), and each of those reads waits a
    # full timeout of its own; an MJPEG stream, decoded frame by frame, stalls after one.
    assert time.monotonic() - paused < 5.0
    assert "no frame within 1 s: the stream stalled" in source.last_error

    own_camera.resume()
    resumed = datetime.now(UTC)
    wait_until(
        lambda: source.status is SourceStatus.ONLINE,
        15.0,
        "online again after the hang",
        lambda: f"{source.status}: {source.last_error}. {own_camera.tail()}",
        every=POLL,
    )
    frame = source.latest(timeout=2.0)
    assert frame is not None and frame.captured_at > resumed
    assert source.reconnects == 1


def test_it_reads_a_video_file_served_over_rtsp(tmp_path, sources):
    clip = write_video(tmp_path / "clip.avi", frames=100, fps=25.0, size=(320, 240))
    with RtspServer(sub=None, files={"/clip": clip}) as server:
        source = stream(sources, server.url_of("/clip")).start()
        frame = source.latest(timeout=8.0)
        assert frame is not None, server.tail()
        assert frame.image.shape == (240, 320, 3)
