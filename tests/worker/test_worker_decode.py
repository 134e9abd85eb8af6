"""The worker decodes less (issue 16, item 1): it scores a camera's detect stream when it has
one, tells each live source how often it samples (faster while someone watches), and
refuses a bad DETECTION_DECODE by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from detection.engine.sources import PacedFileSource
from detection.frames import watch_marker_path
from detection.live.publisher import NullPublisher
from detection.worker import clips, fullrate, preview
from detection.worker.loop import Worker
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, IncidentFactory
from tests.support.processes import SETTINGS_PREFIXES
from tests.support.rtsp import SUB, RtspServer
from tests.support.streams import MJPEGServer
from tests.support.worker import FAST, run_until

pytestmark = [pytest.mark.usefixtures("tiny_settings"), pytest.mark.django_db]


@pytest.mark.slow
def test_it_scores_a_stream_camera_from_its_detect_stream():
    with MJPEGServer(fps=10) as main, MJPEGServer(fps=10) as sub:
        camera = CameraFactory(kind="stream", source=main.url, detect_source=sub.url)
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=5.0, motion_gating=False
        )
        worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, source_options=FAST)
        try:
            run_until(worker, lambda: analysis.scores.count() >= 3)
            source = worker.jobs[analysis.pk].source
        finally:
            worker.shutdown()
    assert source.url == sub.url
    assert sub.connections >= 1 and main.connections == 0  # the main stream stays untouched


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_it_scores_an_rtsp_cameras_sub_stream_from_its_keyframes(settings):
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.DETECTION_DECODE = "auto"
    with RtspServer() as server:  # 25 fps H.264, a keyframe a second, and a sub-stream
        camera = CameraFactory(kind="stream", source=server.url, detect_source=server.sub_url)
        analysis = AnalysisFactory(
            camera=camera,
            status="queued",
            sampling_fps=1.0,
            motion_gating=False,
            incident_open_frames=1000,  # no clip recording (4 a second: every frame decoded)
        )
        options = {**FAST, "open_timeout_s": 5.0}
        worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, source_options=options)
        try:
            run_until(worker, lambda: analysis.scores.count() >= 4, timeout=40.0)
            source = worker.jobs[analysis.pk].source
            scored = source.peek()
        finally:
            worker.shutdown()
    assert source.url == server.sub_url
    assert scored.image.shape == (SUB[1], SUB[0], 3)
    # Sampled every second from a 1 s GOP: only keyframes were decoded.
    assert source.decoding == "keyframes"
    assert source.frames_sampled <= source.frames_grabbed / 10


@pytest.mark.slow
def test_it_samples_each_source_at_its_rate_and_faster_while_watched_or_recording(
    make_video, settings, media
):
    settings.DETECTION_DECODE = "auto"
    clip = make_video("camera.avi", frames=100, fps=25.0)  # MJPG: every frame a keyframe
    opened: list[tuple[dict, PacedFileSource]] = []

    def open_source(kind: str, source: str, **options):
        opened.append((options, PacedFileSource(clip, loop=True, **options)))
        return opened[-1][1]

    analysis = AnalysisFactory(
        camera=CameraFactory(kind="webcam", source="0"),
        status="queued",
        sampling_fps=2.0,
        motion_gating=False,
        incident_open_frames=1000,  # no incident clip (it too would make it sample faster)
    )
    worker = Worker(
        publisher=NullPublisher(), poll_seconds=0.1, source_options=FAST, open_source=open_source
    )
    try:
        run_until(worker, lambda: analysis.scores.count() >= 4)
        options, source = opened[0]
        assert options["sample_interval_s"] == 0.5 and options["decode"] == "auto"
        assert source.decoding == "keyframes"  # a one-frame GOP: only sampled frames decoded
        assert source.frames_sampled < source.frames_grabbed / 4

        marker = watch_marker_path(analysis.pk)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()  # a page shows the live picture
        run_until(worker, lambda: source.sample_interval_s == preview.INTERVAL_S, 5.0)
        old = marker.stat().st_mtime - preview.WATCH_S - 1
        os.utime(marker, (old, old))  # and is gone
        run_until(worker, lambda: source.sample_interval_s == 0.5, 5.0)

        recorder = worker.clips.live[analysis.pk]
        recorder.incident(IncidentFactory(analysis=analysis, end_time_s=None))  # a clip records
        run_until(worker, lambda: source.sample_interval_s == 1.0 / clips.LIVE_FPS, 5.0)
        recorder.close()  # the clip ends
        run_until(worker, lambda: source.sample_interval_s == 0.5, 5.0)
    finally:
        worker.shutdown()


def test_it_gives_the_faster_rate_to_recording_cameras_first_and_keeps_a_place_while_wanted():
    wanted = {3: fullrate.WATCHED, 5: fullrate.RECORDING, 7: fullrate.RECORDING}
    assert fullrate.choose(wanted, set(), 2) == {5, 7}
    assert fullrate.choose(wanted, {3}, 2) == {3, 5}  # a watched camera keeps its place
    assert fullrate.choose(wanted, {3, 5, 7}, 1) == {5}  # fewer places: by priority
    assert fullrate.choose({3: fullrate.WATCHED}, {5}, 1) == {3}  # 5 no longer wants it
    assert fullrate.choose(wanted, {5}, 0) == set()


@pytest.mark.slow
def test_it_samples_only_the_allowed_number_of_cameras_faster_for_clips(
    make_video, settings, media
):
    settings.DETECTION_DECODE = "auto"
    settings.DETECTION_FULL_RATE_CAMERAS = 1
    clip = make_video("camera.avi", frames=100, fps=25.0)
    opened: dict[str, PacedFileSource] = {}

    def open_source(kind: str, source: str, **options):
        opened[source] = PacedFileSource(clip, loop=True, **options)
        return opened[source]

    analyses = [
        AnalysisFactory(
            camera=CameraFactory(kind="webcam", source=str(i)),
            status="queued",
            sampling_fps=1.0,
            motion_gating=False,
            incident_open_frames=1000,  # the clips below are opened by the test
        )
        for i in range(3)
    ]
    worker = Worker(
        publisher=NullPublisher(), poll_seconds=0.1, source_options=FAST, open_source=open_source
    )
    try:
        run_until(worker, lambda: all(a.scores.exists() for a in analyses))
        sources = [worker.jobs[a.pk].source for a in analyses]
        recorders = [worker.clips.live[a.pk] for a in analyses]
        # An incident on every camera at once: one place, for the first analysis.
        for analysis, recorder in zip(analyses, recorders, strict=True):
            recorder.incident(IncidentFactory(analysis=analysis, end_time_s=None))
        fast = 1.0 / clips.LIVE_FPS
        run_until(worker, lambda: sources[0].sample_interval_s == fast, 5.0)
        for _ in range(10):
            worker.tick()
        assert [s.sample_interval_s for s in sources] == [fast, 1.0, 1.0]
        assert worker.full_rate_refused == {analyses[1].pk, analyses[2].pk}
        # The others' clips still get the frames sampled for scoring.
        run_until(
            worker, lambda: all(r.recordings[min(r.recordings)].writer.frames for r in recorders)
        )
        recorders[0].close()  # its clip ends: the place goes to the next camera
        run_until(worker, lambda: sources[1].sample_interval_s == fast, 5.0)
        assert [s.sample_interval_s for s in sources] == [1.0, fast, 1.0]
    finally:
        worker.shutdown()


def test_it_refuses_a_bad_decode_mode_by_name(settings):
    settings.DETECTION_DECODE = "sometimes"
    with pytest.raises(ImproperlyConfigured, match=r"DETECTION_DECODE='sometimes' is invalid"):
        Worker(publisher=NullPublisher())


def test_it_stops_at_start_on_a_bad_decode_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env |= {"DETECTION_DECODE": "often", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    result = subprocess.run(
        [sys.executable, "-c", "import portal.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "DETECTION_DECODE='often' is invalid: expected one of all, auto, grab, keyframes" in (
        result.stderr
    )


class LateFrames(PacedFileSource):
    """A camera whose frame lands just after each of the worker's asks: the first ask of
    every cycle finds nothing new (as a keyframe a GOP apart does, half the time, when the
    GOP equals the sampling interval). Records how long each frame came after that ask."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refused_at: float | None = None
        self.gaps: list[float] = []

    def latest(self, timeout: float = 0.0):
        now = time.monotonic()
        if self.refused_at is None:
            self.refused_at = now
            return None
        frame = super().latest(timeout)
        if frame is not None:
            self.gaps.append(now - self.refused_at)
            self.refused_at = None
        return frame


@pytest.mark.slow
def test_it_asks_again_within_the_tick_when_the_frame_lands_just_after_it(make_video):
    clip = make_video("late.avi", frames=50, fps=25.0)
    camera = CameraFactory(kind="webcam", source="0")
    analysis = AnalysisFactory(
        camera=camera, status="queued", sampling_fps=1.0, motion_gating=False
    )
    made: list[LateFrames] = []

    def late(kind, source, **options):
        made.append(LateFrames(clip, loop=True, **options))
        return made[-1]

    worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, open_source=late)
    try:
        run_until(worker, lambda: analysis.scores.count() >= 4, timeout=30.0)
    finally:
        worker.shutdown()
    (source,) = made
    # Asked again 50 ms later, not at the next tick a whole interval (1 s) on: no sample lost.
    assert len(source.gaps) >= 4
    assert max(source.gaps) < 0.5, source.gaps
