"""The detection engine: CLIP loading, preprocessing, scoring and video sampling.

Django-free on purpose (no Django or ORM imports here): the worker, the API, the benchmark
and anyone's script use it the same way.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# FFmpeg and OpenCV print decoder chatter (damaged slices, missing moov atoms) straight to
# stderr, which would break the one-line errors of the CLI; the engine reports what it
# finds itself. Set before cv2 first opens a video; an operator's own values win.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
if "OPENCV_LOG_LEVEL" not in os.environ:
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

# Exports load on first use (PEP 562): Django imports detection.engine.limits for form
# validation, and web processes should not pay for torch until they score something.
_EXPORTS = {
    "EngineError": "errors",
    "MediaError": "errors",
    "ModelLoadError": "errors",
    "PromptError": "errors",
    "load_image": "images",
    "LoadedModel": "loader",
    "ModelSpec": "loader",
    "load_model": "loader",
    "ScoredFrame": "pipeline",
    "score_video": "pipeline",
    "summarize": "pipeline",
    "PROTOTYPE_LOGIT_SCALE": "scoring",
    "Box": "scoring",
    "ScoreBatch": "scoring",
    "Scorer": "scoring",
    "compute_anomaly_scores": "scoring",
    "VideoReader": "video",
    "VideoStats": "video",
    "validate_sampling_fps": "video",
}
__all__ = [
    "PROTOTYPE_LOGIT_SCALE",
    "Box",
    "EngineError",
    "LoadedModel",
    "MediaError",
    "ModelLoadError",
    "ModelSpec",
    "PromptError",
    "ScoreBatch",
    "ScoredFrame",
    "Scorer",
    "VideoReader",
    "VideoStats",
    "compute_anomaly_scores",
    "load_image",
    "load_model",
    "score_video",
    "summarize",
    "validate_sampling_fps",
]

if TYPE_CHECKING:
    from .errors import EngineError, MediaError, ModelLoadError, PromptError
    from .images import load_image
    from .loader import LoadedModel, ModelSpec, load_model
    from .pipeline import ScoredFrame, score_video, summarize
    from .scoring import PROTOTYPE_LOGIT_SCALE, Box, ScoreBatch, Scorer, compute_anomaly_scores
    from .video import VideoReader, VideoStats, validate_sampling_fps


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
