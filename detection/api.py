"""The programmatic API: score an image or a whole video in one call.

    from detection.api import analyze_image, analyze_video, compute_anomaly_scores

Results are plain dictionaries shaped like the prototype's (`status`, `error_message`,
`data`, `metadata`). Bad input (a missing, empty, corrupt or non-video file, an empty
prompt, an impossible sampling rate or threshold, weights that cannot be loaded) comes back
as `{"status": "Error", "error_message": ...}`, never as an exception.

Outside a Django project, the settings module `portal.settings` is set up on first use so
the same environment variables (DETECTION_MODEL, DETECTION_PRETRAINED, ...) apply.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from .engine import (
    PROTOTYPE_LOGIT_SCALE,
    EngineError,
    MediaError,
    ModelSpec,
    Scorer,
    VideoReader,
    VideoStats,
    compute_anomaly_scores,
    load_image,
    load_model,
    score_video,
    summarize,
    validate_sampling_fps,
)
from .engine.images import ImageInput
from .engine.pipeline import Stopwatch
from .engine.prompts import Prompts
from .engine.video import DEFAULT_BLACK_LEVEL

__all__ = ["PROTOTYPE_LOGIT_SCALE", "analyze_image", "analyze_video", "compute_anomaly_scores"]

DEFAULT_THRESHOLD = 0.6
Progress = Callable[[int, int], None]  # (frames decoded, frames expected or 0 if unknown)


def _configured() -> tuple[ModelSpec, int, float | None]:
    from django.conf import settings

    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django

        django.setup()
    from . import conf

    return conf.model_spec(), conf.batch_size(), conf.logit_scale()


def _check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise EngineError(f"threshold {threshold!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise EngineError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    return value


def _error(exc: BaseException) -> dict[str, Any]:
    return {"status": "Error", "error_message": str(exc), "data": [], "metadata": {}}


def _label(score: float, threshold: float) -> str:
    return "Anomaly" if score >= threshold else "Normal"


def analyze_image(
    image: ImageInput,
    normal_prompts: Prompts,
    anomaly_prompts: Prompts,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    logit_scale: float | None = None,
    localize: bool = False,
    spec: ModelSpec | None = None,
) -> dict[str, Any]:
    """Score one image (path, bytes, PIL image or BGR array; format read from content).

    Returns `{"status", "normal", "anomaly", "score", "label", ...}`: raw cosine similarities
    to each prompt ensemble, the probability of anomaly and Normal/Anomaly at `threshold`.
    """
    try:
        threshold = _check_threshold(threshold)
        default_spec, _, default_scale = _configured()
        frame = load_image(image)
        loaded = load_model(spec or default_spec)
        scorer = Scorer(
            loaded,
            normal_prompts,
            anomaly_prompts,
            logit_scale if logit_scale is not None else default_scale,
        )
        result = scorer.score_frames([frame])
        score = float(result.score[0])
        out: dict[str, Any] = {
            "status": "Success",
            "error_message": None,
            "normal": float(result.normal[0]),
            "anomaly": float(result.anomaly[0]),
            "score": score,
            "label": _label(score, threshold),
            "threshold": threshold,
            "logit_scale": scorer.logit_scale,
            "width": int(frame.shape[1]),
            "height": int(frame.shape[0]),
            "normal_prompts": list(scorer.normal_prompts),
            "anomaly_prompts": list(scorer.anomaly_prompts),
            **loaded.describe(),
        }
        if isinstance(image, (str, Path)):
            out["path"] = str(image)
        if localize and score >= threshold:
            box = scorer.localize(frame)
            out["box"] = {
                "x0": box.x0,
                "y0": box.y0,
                "x1": box.x1,
                "y1": box.y1,
                "score": box.score,
            }
        return out
    except EngineError as exc:
        return _error(exc)
    except cv2.error as exc:
        return _error(MediaError(f"OpenCV could not process the image: {exc.msg or exc}"))


def analyze_video(
    video_path: str | Path,
    prompt_normal: Prompts,
    prompt_anomaly: Prompts,
    sampling_rate_fps: float = 1.0,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    skip_black_frames: bool = True,
    black_level: float = DEFAULT_BLACK_LEVEL,
    batch_size: int | None = None,
    logit_scale: float | None = None,
    spec: ModelSpec | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score a video file at `sampling_rate_fps`; the prototype's result dictionary.

    `data` holds one item per scored frame: `time_s`, `frame_index`, `score` (probability of
    anomaly), `normal`/`anomaly` (raw cosine similarities) and `label`. `metadata` holds the
    prototype's statistics plus what decoding found (`header_mismatch`, `ended_early`, ...).
    """
    clock = Stopwatch()
    try:
        threshold = _check_threshold(threshold)
        default_spec, default_batch, default_scale = _configured()
        validate_sampling_fps(sampling_rate_fps)
        batch_size = int(batch_size or default_batch)
        if batch_size < 1:
            raise EngineError(f"batch size must be at least 1, got {batch_size}")
        with VideoReader(video_path) as reader:
            # Probe the file before the (slow) model load, so bad input fails fast.
            loaded = load_model(spec or default_spec)
            scorer = Scorer(
                loaded,
                prompt_normal,
                prompt_anomaly,
                logit_scale if logit_scale is not None else default_scale,
            )

            def report(stats: VideoStats) -> None:
                if progress is not None:
                    progress(stats.frames_decoded, stats.header_frames)

            frames = [
                f
                for batch in score_video(
                    reader,
                    scorer,
                    sampling_rate_fps,
                    batch_size=batch_size,
                    skip_black=skip_black_frames,
                    black_level=black_level,
                    on_progress=report,
                )
                for f in batch
            ]
            stats = reader.stats
    except EngineError as exc:
        return _error(exc)
    except cv2.error as exc:
        return _error(MediaError(f"{video_path}: OpenCV could not decode the video: {exc.msg}"))

    seconds = clock.seconds
    data = [
        {
            "time_s": f.time_s,
            "frame_index": f.frame_index,
            "score": f.score,
            "normal": f.normal,
            "anomaly": f.anomaly,
            "label": _label(f.score, threshold),
        }
        for f in frames
    ]
    metadata: dict[str, Any] = {
        "total_frames": stats.frames_decoded,
        "total_seconds": stats.total_seconds,
        **summarize(frames, threshold),
        "frames_scored": len(frames),
        "sampling_rate_fps": float(sampling_rate_fps),
        "fps": stats.fps,
        "fps_source": stats.fps_source,
        "header_fps": stats.header_fps,
        "header_frames": stats.header_frames,
        "header_mismatch": stats.header_mismatch,
        "ended_early": stats.ended_early,
        "black_frames_skipped": stats.black_frames_skipped,
        "skip_black_frames": skip_black_frames,
        "width": stats.width,
        "height": stats.height,
        "codec": stats.codec,
        "warnings": stats.warnings,
        "logit_scale": scorer.logit_scale,
        "normal_prompts": list(scorer.normal_prompts),
        "anomaly_prompts": list(scorer.anomaly_prompts),
        "batch_size": batch_size,
        "processing_seconds": seconds,
        "scored_frames_per_second": len(frames) / seconds if seconds > 0 else None,
        **loaded.describe(),
    }
    return {"status": "Success", "error_message": None, "data": data, "metadata": metadata}
