"""Live frames share forward passes (issue 16, capacity): cameras ticking close together are
scored in one batch, and a camera with nobody to wait for is scored at once."""

from __future__ import annotations

import time

import pytest

from detection.engine.sources import PacedFileSource
from detection.live.publisher import NullPublisher
from detection.worker.loop import LIVE_WAIT_MAX_S, LiveJob, Worker
from tests.support.factories import AnalysisFactory, CameraFactory
from tests.support.worker import FAST, run_until

pytestmark = [pytest.mark.usefixtures("tiny_settings"), pytest.mark.django_db, pytest.mark.slow]


def webcams(make_video, count: int, sampling_fps: float):
    """`count` simulated webcams (a clip paced in real time) and a worker serving them."""
    clip = make_video("webcam.avi", frames=50, fps=25.0)
    analyses = [
        AnalysisFactory(
            camera=CameraFactory(kind="webcam", source=str(i)),
            status="queued",
            sampling_fps=sampling_fps,
            motion_gating=False,
        )
        for i in range(count)
    ]
    worker = Worker(
        publisher=NullPublisher(),
        poll_seconds=0.1,
        source_options=FAST,
        open_source=lambda kind, source, **o: PacedFileSource(clip, loop=True, **o),
    )
    passes: list[tuple[float, list[int]]] = []
    score_step = worker.score_step

    def recording(pending):
        passes.append((time.monotonic(), [p.job.pk for p in pending]))
        score_step(pending)

    worker.score_step = recording  # type: ignore[method-assign]
    return analyses, worker, passes


def serving(worker: Worker, count: int) -> bool:
    live = [j for j in worker.jobs.values() if isinstance(j, LiveJob)]
    return len(live) == count and all(j.source.peek() is not None for j in live)


def test_it_scores_cameras_ticking_close_together_in_one_pass(make_video):
    analyses, worker, passes = webcams(make_video, 4, sampling_fps=0.5)  # a tick every 2 s
    try:
        run_until(worker, lambda: serving(worker, 4) and not worker.waiting)
        jobs = [worker.jobs[a.pk] for a in analyses]
        start = time.monotonic() + 0.1
        # Three cameras due within 0.2 s of each other, the fourth 1.2 s later.
        for job, offset in zip(jobs, (0.0, 0.1, 0.2, 1.2), strict=True):
            job.ticker.next_due = start + offset
            job.source.will_take(start + offset)  # as gather_step tells it, for a fresh frame
        passes.clear()
        run_until(worker, lambda: sum(len(pks) for _, pks in passes) >= 4)
    finally:
        worker.shutdown()
    first, second = passes[0], passes[1]
    # The first camera's frame waited for the next two (not past its share of the interval),
    # and the fourth, with no camera due within its own wait, went alone at once.
    assert sorted(first[1]) == sorted(a.pk for a in analyses[:3]), passes
    assert start + 0.2 <= first[0], passes
    assert second[1] == [analyses[3].pk], passes
    assert second[0] - (start + 1.2) < LIVE_WAIT_MAX_S, passes


def test_it_scores_a_lone_cameras_frame_in_the_tick_that_took_it(make_video):
    (analysis,), worker, passes = webcams(make_video, 1, sampling_fps=4.0)
    gathered: list[float] = []
    live_frame = worker._live_frame

    def taking(job, frame):
        gathered.append(time.monotonic())
        return live_frame(job, frame)

    worker._live_frame = taking  # type: ignore[method-assign]
    try:
        run_until(worker, lambda: analysis.scores.count() >= 4)
    finally:
        worker.shutdown()
    assert len(passes) >= 4 and all(pks == [analysis.pk] for _, pks in passes)
    # Each frame went through the model in the same tick it was taken in.
    for taken, (scored, _) in zip(gathered, passes, strict=False):
        assert 0 <= scored - taken < 0.1, (gathered, passes)
