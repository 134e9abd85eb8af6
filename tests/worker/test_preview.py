"""The worker's live picture and frame ring (issue 14, items 7 and 8), with a real worker
loop, the tiny model and a video file paced in real time standing in for a camera."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from detection.engine.sources import Backoff, PacedFileSource
from detection.frames import frame_ring_dir, live_picture_path, watch_marker_path
from detection.live.publisher import NullPublisher
from detection.worker import preview
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory
from tests.support.media import scene
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.usefixtures("tiny_settings", "media"), pytest.mark.django_db]

FAST = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "backoff": Backoff(initial_s=0.1, cap_s=0.5, jitter=0.0, max_failures=50, max_opens=100),
}


@pytest.fixture
def writer():
    """The worker's "pictures" thread, for the LivePictures a test makes without a worker."""
    with ThreadPoolExecutor(1, thread_name_prefix="pictures") as executor:
        yield executor


def live_worker(clip) -> Worker:
    return Worker(
        publisher=NullPublisher(),
        poll_seconds=0.1,
        source_options=FAST,
        open_source=lambda kind, source, **o: PacedFileSource(clip, loop=True, **o),
    )


def run_for(worker: Worker, seconds: float, on_tick=None) -> None:
    """The worker's own loop (tick, then its idle wait) for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not worker.tick():
            worker._sleep(worker._idle_wait())
        if on_tick is not None:
            on_tick()


def mtime(path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_it_writes_the_live_picture_a_few_times_a_second_only_while_watched(make_video):
    clip = make_video("camera.avi", frames=100, fps=25.0, size=(640, 360))
    analysis = AnalysisFactory(
        camera=CameraFactory(kind="webcam", source="0"),
        status="queued",
        sampling_fps=1.0,
        motion_gating=False,
    )
    picture, marker = live_picture_path(analysis.pk), watch_marker_path(analysis.pk)
    worker = live_worker(clip)
    try:
        wait_until(lambda: worker.tick() or analysis.scores.exists(), 30, "a first score")
        run_for(worker, 1.5)
        assert not picture.exists()  # nobody watches: nothing encoded

        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        versions: set[int] = set()

        def note() -> None:
            versions.add(mtime(picture))
            os.utime(marker)  # a page asking all the time

        run_for(worker, 3.0, note)
        versions.discard(None)
        # 4 a second for 3 s (the first within a second of the marker): 8 to 12 versions.
        assert 7 <= len(versions) <= 13, len(versions)
        camera = worker.pictures.cameras[analysis.pk]
        assert camera.written == len(versions) or abs(camera.written - len(versions)) <= 1

        old = time.time() - preview.WATCH_S - 1  # the last page left
        os.utime(marker, (old, old))
        run_for(worker, preview.CHECK_S + 0.3)
        stopped = mtime(picture)
        written = camera.written
        run_for(worker, 1.5)
        assert mtime(picture) == stopped and camera.written == written
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_it_keeps_a_bounded_ring_of_scored_frames_and_forgets_another_runs(
    make_video, monkeypatch, writer
):
    clip = make_video("camera.avi", frames=50, fps=25.0)
    monkeypatch.setattr(preview, "RING_SECONDS", 1.0)  # 4 frames at 4 frames/s
    analysis = AnalysisFactory(
        camera=CameraFactory(kind="webcam", source="0"),
        status="queued",
        sampling_fps=4.0,
        motion_gating=False,
    )
    ring = frame_ring_dir(analysis.pk)
    worker = live_worker(clip)
    try:
        wait_until(lambda: worker.tick() or analysis.scores.count() >= 8, 30, "8 scores")
    finally:
        worker.shutdown()
    stored = sorted(analysis.scores.values_list("frame_index", flat=True))
    kept = sorted(int(p.stem) for p in ring.glob("*.jpg"))
    assert kept == stored[-4:]

    # A re-run starts from frame 0 again: what the ring holds is another run's.
    analysis.scores.all().delete()
    cameras = preview.LivePictures(writer)
    cameras.start(analysis.pk, source=None, sampling_fps=4.0, next_index=0)
    assert not list(ring.glob("*.jpg"))


def test_it_writes_the_ring_in_a_thread_of_its_own(media, monkeypatch, writer):
    threads: list[str] = []
    compress = preview.jpeg

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return compress(*args, **kwargs)

    monkeypatch.setattr(preview, "jpeg", recording)
    pictures = preview.LivePictures(writer)
    pictures.start(7, source=None, sampling_fps=1.0, next_index=0)
    items = [SimpleNamespace(frame_index=i, image=scene(120, 160, t=i), box=None) for i in range(3)]
    pictures.stored(7, items)
    pictures.close()  # as the worker stops: what was queued is written
    assert sorted(int(p.stem) for p in frame_ring_dir(7).glob("*.jpg")) == [0, 1, 2]
    assert threads and all(name.startswith("pictures") for name in threads), threads


def test_it_keeps_ring_frames_a_resumed_run_still_has(media):
    ring = preview.FrameRing(5, capacity=3)
    ring.folder.mkdir(parents=True)
    for index in (1, 2, 3, 4, 9):
        (ring.folder / f"{index}.jpg").write_bytes(b"jpeg")
    (ring.folder / "junk.txt").write_bytes(b"?")
    ring.reset(first_unstored=5)  # scores 0..4 are stored; 9 is not (an older, longer run)
    assert sorted(p.name for p in ring.folder.iterdir()) == ["2.jpg", "3.jpg", "4.jpg"]


def test_it_never_steals_frames_from_scoring(tmp_path):
    from detection.engine.sources import PacedFileSource
    from tests.support.media import write_video

    video = tmp_path / "clip.avi"
    write_video(video)
    source = PacedFileSource(video).start()
    try:
        taken = source.latest(5.0)
        assert taken is not None
        # Peeking leaves the newest frame for scoring: `latest` still returns it (or a newer one).
        peeked = preview.newest_frame(source)
        assert peeked is not None and peeked.index >= taken.index
        again = source.latest(5.0)
        assert again is not None and again.index >= peeked.index
    finally:
        source.stop()
    assert preview.newest_frame(object()) is None  # a stand-in without peek offers nothing
    assert preview.ring_capacity(1.0) == 600 and preview.ring_capacity(30.0) == preview.RING_MAX
