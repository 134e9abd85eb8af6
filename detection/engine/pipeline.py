"""Scoring a whole video file: decode in a background thread, score in batches."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .detector import Detector
from .scoring import Scorer
from .video import DEFAULT_BLACK_LEVEL, VideoReader, VideoStats

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, `depth` items ahead.

    OpenCV decoding and resizing release the GIL, so decoding the next batch overlaps with
    the model scoring this one. Errors are re-raised in the consumer; a consumer that stops
    early stops the producer too.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, not swallowed
            put(exc)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass(frozen=True)
class ScoredFrame:
    frame_index: int
    time_s: float
    score: float
    normal: float
    anomaly: float
    prompt_score: float | None = None
    novelty: float | None = None
    learning: bool = False


def _batches(
    reader: VideoReader,
    detector: Detector,
    sampling_fps: float,
    batch_size: int,
    skip_black: bool,
    black_level: float,
    start_index: int,
    on_progress: Callable[[VideoStats], None] | None,
) -> Iterator[list[Any]]:
    frames = reader.frames(
        sampling_fps,
        start_index=start_index,
        skip_black=skip_black,
        black_level=black_level,
        on_progress=on_progress,
    )
    batch: list[Any] = []
    for frame in frames:
        # Fit to model size in the decoder thread: the model thread gets small arrays.
        batch.append((frame.index, frame.time_s, detector.prepare(frame.image)))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_video(
    reader: VideoReader,
    detector: Detector | Scorer,
    sampling_fps: float,
    *,
    batch_size: int = 16,
    skip_black: bool = True,
    black_level: float = DEFAULT_BLACK_LEVEL,
    start_index: int = 0,
    on_progress: Callable[[VideoStats], None] | None = None,
) -> Iterator[list[ScoredFrame]]:
    """Yield one list of scored frames per batch, in frame order."""
    if isinstance(detector, Scorer):
        detector = Detector(detector)
    batches = _batches(
        reader,
        detector,
        sampling_fps,
        batch_size,
        skip_black,
        black_level,
        start_index,
        on_progress,
    )
    for batch in prefetch(batches):
        features, views = detector.encode([b[2] for b in batch])
        points = detector.decide([b[1] for b in batch], features, views)
        yield [
            ScoredFrame(idx, t, p.score, p.normal, p.anomaly, p.prompt_score, p.novelty, p.learning)
            for (idx, t, _), p in zip(batch, points, strict=True)
        ]
    # A file shorter than the learning time: what it held is the memory.
    detector.finish_learning()


def summarize(frames: list[ScoredFrame], threshold: float) -> dict[str, Any]:
    """The prototype's statistics over a scored time series (learning frames left out: they
    are never anomalies)."""
    frames = [f for f in frames if not f.learning]
    if not frames:
        return {
            "max_anomaly_score": None,
            "max_anomaly_time": None,
            "average_score": None,
            "min_score": None,
            "max_score": None,
            "std_score": None,
            "anomaly_threshold": threshold,
            "is_anomaly_detected": False,
            "frames_above_threshold": 0,
        }
    scores = np.array([f.score for f in frames])
    peak = int(np.argmax(scores))
    return {
        "max_anomaly_score": float(scores[peak]),
        "max_anomaly_time": frames[peak].time_s,
        "max_anomaly_frame_index": frames[peak].frame_index,
        "average_score": float(scores.mean()),
        "min_score": float(scores.min()),
        "max_score": float(scores.max()),
        "std_score": float(scores.std()),
        "anomaly_threshold": threshold,
        "is_anomaly_detected": bool(scores.max() >= threshold),
        "frames_above_threshold": int((scores >= threshold).sum()),
    }


def run_metadata(
    stats: VideoStats, frames: list[ScoredFrame], threshold: float, scorer: Scorer
) -> dict[str, Any]:
    """The prototype's metadata for a scored file, plus what decoding found and the model."""
    return {
        "total_frames": stats.frames_decoded,
        "total_seconds": stats.total_seconds,
        **summarize(frames, threshold),
        "frames_scored": len(frames),
        "fps": stats.fps,
        "fps_source": stats.fps_source,
        "header_fps": stats.header_fps,
        "header_frames": stats.header_frames,
        "header_mismatch": stats.header_mismatch,
        "ended_early": stats.ended_early,
        "black_frames_skipped": stats.black_frames_skipped,
        "width": stats.width,
        "height": stats.height,
        "codec": stats.codec,
        "warnings": stats.warnings,
        "logit_scale": scorer.logit_scale,
        "normal_prompts": list(scorer.normal_prompts),
        "anomaly_prompts": list(scorer.anomaly_prompts),
        **scorer.loaded.describe(),
    }


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
