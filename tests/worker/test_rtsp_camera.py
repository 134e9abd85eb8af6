"""The worker on a real RTSP camera (gst-rtsp-server, tests/support/rtsp.py): it scores the
H.264 stream, notices when the camera goes away and scores again when it returns."""

from __future__ import annotations

import pytest
from django.db.models import Max
from django.utils import timezone

from cameras.models import Camera
from detection.engine.sources import Backoff
from detection.live.publisher import NullPublisher
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory
from tests.support.rtsp import RtspServer
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.django_db,
    pytest.mark.slow,
    pytest.mark.timeout(90),
]

# FFmpeg needs ~1.2 s to open an RTSP stream (DESCRIBE, SETUP, PLAY, the first keyframe):
# the open timeout leaves room for that on two busy cores; the rest keeps the test short.
OPTIONS = {
    "open_timeout_s": 5.0,
    "read_timeout_s": 1.0,
    "backoff": Backoff(initial_s=0.1, cap_s=0.5, jitter=0.0, max_failures=50, max_opens=100),
}


def run_until(
    worker: Worker, condition, what: str, camera: Camera, server: RtspServer, timeout: float = 20.0
) -> None:
    """Run the worker one tick at a time until `condition` holds."""

    def ticked() -> bool:
        worker.tick()
        return condition()

    def detail() -> str:
        camera.refresh_from_db()
        return f"camera {camera.status}: {camera.last_error!r}. {server.tail()}"

    wait_until(ticked, timeout, what, detail, every=0.02)


def camera_status(camera: Camera) -> str:
    camera.refresh_from_db()
    return camera.status


def test_it_scores_an_rtsp_camera_and_follows_it_through_an_outage(settings):
    # Streams to loopback are refused unless allowed, as in production.
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with RtspServer(sub=None) as server:
        camera = CameraFactory(kind="stream", source=server.url)
        analysis = AnalysisFactory(
            camera=camera, status="queued", sampling_fps=5.0, motion_gating=False
        )
        worker = Worker(publisher=NullPublisher(), poll_seconds=0.1, source_options=OPTIONS)
        try:
            run_until(worker, lambda: analysis.scores.count() >= 5, "five scores", camera, server)
            assert camera_status(camera) == "online"
            assert not analysis.scores.filter(captured_at=None).exists()

            server.stop()  # the camera dies
            run_until(
                worker,
                lambda: camera_status(camera) in ("reconnecting", "offline"),
                "the camera to leave online",
                camera,
                server,
            )
            camera.refresh_from_db()
            assert "ended or the connection dropped" in camera.last_error or (
                "cannot open" in camera.last_error
            ), camera.last_error
            before = analysis.scores.aggregate(t=Max("captured_at"), i=Max("frame_index"))

            restarted = timezone.now()
            server.start()  # back on the same port
            fresh = analysis.scores.filter(captured_at__gt=restarted)
            run_until(
                worker,
                lambda: camera_status(camera) == "online" and fresh.count() >= 3,
                "three scores of pictures taken after the camera's return",
                camera,
                server,
            )
            camera.refresh_from_db()
            assert camera.reconnect_count >= 1 and camera.last_error == ""
        finally:
            worker.shutdown()
    assert restarted > before["t"]
    assert fresh.aggregate(i=Max("frame_index"))["i"] > before["i"]
    indices = list(analysis.scores.values_list("frame_index", flat=True))
    assert indices == list(range(len(indices)))  # no index reused across the outage
