"""The detection engine: CLIP loading, preprocessing, scoring and video sampling.

Django-free on purpose (no Django or ORM imports here): the worker, the API, the benchmark
and anyone's script use it the same way.
"""

from __future__ import annotations

import os

# FFmpeg and OpenCV print decoder chatter (damaged slices, missing moov atoms) straight to
# stderr, which would break the one-line errors of the CLI; the engine reports what it
# finds itself. Set before cv2 first opens a video; an operator's own values win.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
if "OPENCV_LOG_LEVEL" not in os.environ:
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

from .errors import EngineError, MediaError, ModelLoadError, PromptError
from .images import load_image
from .loader import LoadedModel, ModelSpec, load_model
from .pipeline import ScoredFrame, score_video, summarize
from .scoring import PROTOTYPE_LOGIT_SCALE, Box, ScoreBatch, Scorer, compute_anomaly_scores
from .video import VideoReader, VideoStats, validate_sampling_fps

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
