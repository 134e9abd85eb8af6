"""The worker on live cameras: a local MJPEG stream that dies and returns, a simulated webcam."""

from __future__ import annotations

import itertools
import time

import pytest
from django.utils import timezone

from cameras.models import Camera
from detection.engine.sources import Backoff, PacedFileSource
from detection.live.publisher import NullPublisher
from detection.models import Analysis
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory
from tests.support.streams import MJPEGServer
from tests.support.worker import FAST, run_until

# Real-time streams: each test watches a camera for a second or two.
pytestmark = [pytest.mark.usefixtures("tiny_settings"), pytest.mark.django_db, pytest.mark.slow]


def camera_status(camera: Camera) -> str:
    camera.refresh_from_db()
    return camera.status


def test_it_scores_a_stream_and_follows_it_through_an_outage():
    with MJPEGServer(fps=10) as server:
        camera = CameraFactory(kind="stream", source=server.url)
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=5.0, motion_gating=False
        )
        worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, source_options=FAST)
        try:
            run_until(worker, lambda: analysis.scores.count() >= 5)
            assert camera_status(camera) == "online"
            scores = list(analysis.scores.order_by("frame_index"))
            assert [s.frame_index for s in scores] == list(range(len(scores)))
            assert all(s.captured_at is not None for s in scores)
            times = [s.time_s for s in scores]
            # Seconds since the analysis started, about 1/5 s apart (sampled at 5/s).
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(g > 0 for g in gaps) and 0.1 < sum(gaps) / len(gaps) < 0.5, times

            server.stop()
            run_until(worker, lambda: camera_status(camera) in ("reconnecting", "offline"))
            camera.refresh_from_db()
            assert camera.last_error
            before = analysis.scores.count()

            server.start()
            run_until(
                worker,
                lambda: camera_status(camera) == "online" and analysis.scores.count() >= before + 3,
            )
            camera.refresh_from_db()
            assert camera.reconnect_count >= 1 and camera.last_error == ""
        finally:
            worker.shutdown()
    analysis.refresh_from_db()
    assert (analysis.status, analysis.lease_owner) == ("queued", "")  # resumable elsewhere
    indices = list(analysis.scores.values_list("frame_index", flat=True))
    assert indices == list(range(len(indices)))  # no index reused across the outage


def test_it_scores_a_simulated_webcam_without_a_backlog(make_video, settings):
    """A webcam cannot be plugged in here: a video file paced in real time stands in."""
    clip = make_video("webcam.avi", frames=100, fps=25.0)
    opened = []

    def fake_open_source(kind: str, source: str, **options: object):
        assert (kind, source) == ("webcam", "0")
        opened.append(PacedFileSource(clip, loop=True, **options))
        return opened[-1]

    camera = CameraFactory(kind="webcam", source="0")
    analysis = AnalysisFactory(
        camera=camera, status="queued", sampling_fps=4.0, motion_gating=False
    )
    worker = Worker(
        publisher=NullPublisher(),
        poll_seconds=0.1,
        source_options=FAST,
        open_source=fake_open_source,
    )
    try:
        run_until(worker, lambda: analysis.scores.count() >= 6)
    finally:
        worker.shutdown()
    stored = list(analysis.scores.order_by("frame_index"))
    now = timezone.now()
    # Sampled at ~4 per second from a 25 fps source: newest frames, not a queue of old ones.
    assert (now - stored[-1].captured_at).total_seconds() < 2.0
    gaps = [(b.captured_at - a.captured_at).total_seconds() for a, b in itertools.pairwise(stored)]
    assert 0.1 < sum(gaps) / len(gaps) < 0.6
    assert not opened[0].running
    assert Analysis.objects.get(pk=analysis.pk).status == "queued"


def test_it_skips_still_frames_with_motion_gating(make_video):
    import numpy as np

    from tests.support.media import scene

    still = make_video("still.avi", frames=10, fps=25.0)
    # Re-write the clip with one identical frame repeated: nothing moves.
    import cv2

    writer = cv2.VideoWriter(str(still), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    frame = scene(240, 320, seed=5)
    for _ in range(50):
        writer.write(frame)
    writer.release()
    camera = CameraFactory(kind="webcam", source="0")
    analysis = AnalysisFactory(
        camera=camera,
        status="queued",
        sampling_fps=10.0,
        motion_gating=True,
        rescore_interval_s=1.0,
    )
    worker = Worker(
        publisher=NullPublisher(),
        poll_seconds=0.1,
        source_options=FAST,
        open_source=lambda kind, source, **o: PacedFileSource(still, loop=True, **o),
    )
    try:
        started = time.monotonic()
        run_until(worker, lambda: time.monotonic() - started > 2.5, timeout=10)
    finally:
        worker.shutdown()
    # ~25 frames were due at 10 fps; a still scene is re-scored about once a second.
    assert 2 <= analysis.scores.count() <= 4
    assert np.all(np.diff(list(analysis.scores.values_list("time_s", flat=True))) > 0.8)


def test_it_rate_limits_a_flapping_camera_and_stores_its_reconnect_count():
    # Every connection sends three frames and hangs up, as a camera on a bad link does many
    # times a minute. The policy allows 4 opens per 2 s: the worker must hold to that and
    # keep the camera's reconnect count current, even when it is never seen offline.
    limit = Backoff(initial_s=0.01, cap_s=0.05, jitter=0.0, max_failures=50, max_opens=4, per_s=2.0)
    options = {"open_timeout_s": 2.0, "read_timeout_s": 1.0, "backoff": limit}
    with MJPEGServer(fps=25, frames_per_connection=3) as flapping:
        camera = CameraFactory(kind="stream", source=flapping.url)
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=25.0, motion_gating=False
        )
        worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, source_options=options)
        started = time.monotonic()
        try:
            run_until(worker, lambda: camera.refresh_from_db() or camera.reconnect_count >= 5)
            elapsed = time.monotonic() - started
        finally:
            worker.shutdown()
        windows = elapsed / limit.per_s + 1  # any 2 s window holds at most 4 opens
        assert flapping.connections <= limit.max_opens * windows + 1, (
            flapping.connections,
            elapsed,
        )
    camera.refresh_from_db()
    assert camera.reconnect_count >= 5
    assert analysis.scores.exists()  # the frames between drops were scored
