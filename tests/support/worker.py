"""The worker in process: a publisher that records, file analyses, what a run stores, live
source options that give up and retry quickly, and ticking a worker until a condition holds.

(A publisher that drops everything is the application's own:
`detection.live.publisher.NullPublisher`.)
"""

from __future__ import annotations

from detection.engine.sources import Backoff
from detection.models import Analysis
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory
from tests.support.waiting import wait_until

NORMAL = "a quiet street\nan empty road"
ANOMALY = "a car crash\na fire"

# A worker's `source_options` for local test cameras: short timeouts, quick reconnects.
FAST = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "backoff": Backoff(initial_s=0.1, cap_s=0.5, jitter=0.0, max_failures=50, max_opens=100),
}


class RecordingPublisher:
    """Keeps every message the worker publishes, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, dict]] = []

    def publish(self, analysis_id: int, kind: str, payload: dict) -> None:
        self.messages.append((analysis_id, kind, payload))

    def flush(self, timeout: float = 5.0) -> bool:
        return True  # kept as published: nothing waits

    def kinds(self, kind: str) -> list[dict]:
        return [p for _, k, p in self.messages if k == kind]


def file_analysis(path, **fields) -> Analysis:
    """A queued analysis of the video at `path` (on a camera of its own)."""
    camera = CameraFactory(kind="file", source=str(path))
    fields = {"status": "queued", "normal_prompts": NORMAL, "anomaly_prompts": ANOMALY, **fields}
    return AnalysisFactory(camera=camera, **fields)


def expected_indices(frames: int, fps: float, rate: float) -> list[int]:
    """The frame indices a run stores: a clip of `frames` at `fps`, sampled at `rate`."""
    return list(range(0, frames, round(fps / rate)))


def run_until(worker: Worker, condition, timeout: float = 20.0) -> None:
    """Run the worker one tick at a time until `condition` holds."""

    def ticked() -> bool:
        worker.tick()
        return condition()

    wait_until(ticked, timeout, "the condition, ticking the worker", every=0.02)
