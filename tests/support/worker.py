"""The worker in process: a publisher that records, file analyses, what a run stores.

(A publisher that drops everything is the application's own:
`detection.live.publisher.NullPublisher`.)
"""

from __future__ import annotations

from detection.models import Analysis
from tests.support.factories import AnalysisFactory, CameraFactory

NORMAL = "a quiet street\nan empty road"
ANOMALY = "a car crash\na fire"


class RecordingPublisher:
    """Keeps every message the worker publishes, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, dict]] = []

    def publish(self, analysis_id: int, kind: str, payload: dict) -> None:
        self.messages.append((analysis_id, kind, payload))

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
