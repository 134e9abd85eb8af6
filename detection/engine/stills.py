"""Single pictures: one frame of a video file on demand, small JPEGs, a live source's newest
frame.

`frame_at(path, index)` decodes the frame the worker scored as `index` (its position in the
decoded stream, as `VideoReader` counts). OpenCV's FFmpeg backend seeks to the keyframe
before it and decodes forward, which gave the very frame sequential decoding gives on every
sample video here (vtest.avi, Megamind.avi, the MP4s: mean absolute difference 0.00) in
10-300 ms. Sequential reading stays the rule for whole files (video.py); one frame for a
click on a chart is what seeking is for. A container that cannot seek is read from the start,
up to `MAX_SEQUENTIAL_FRAMES`, so one request costs bounded time.

Django-free like the rest of the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import MediaError
from .video import check_video_file

MAX_WIDTH = 640  # what pages show; bigger frames are scaled down before encoding
JPEG_QUALITY = 80
# Reading from the start when seeking fails: about 2 minutes of 25 fps video at most.
MAX_SEQUENTIAL_FRAMES = 3000


def resize_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at `size` (width, height), for showing. Area averaging where it shrinks a lot
    (no aliasing); bilinear for small steps, where OpenCV's area path costs 5x more (4.8 ms
    vs 0.8 ms for 768x576 to 640x480: the worker does this for every scored live frame)
    for no visible gain."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    heavy = image.shape[1] >= 2 * size[0]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if heavy else cv2.INTER_LINEAR)


def fit_width(image: np.ndarray, max_width: int = MAX_WIDTH) -> np.ndarray:
    """`image` scaled down (never up) to at most `max_width` pixels wide."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    return resize_to(image, (max_width, max(1, round(height * max_width / width))))


def jpeg(image: np.ndarray, max_width: int = MAX_WIDTH, quality: int = JPEG_QUALITY) -> bytes:
    """A BGR image as JPEG bytes, at most `max_width` wide; b"" if it cannot be encoded."""
    ok, data = cv2.imencode(
        ".jpg", fit_width(image, max_width), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    return data.tobytes() if ok else b""


def frame_at(path: str | Path, index: int) -> np.ndarray:
    """The frame at position `index` of the decoded stream (BGR), or MediaError saying why."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise MediaError(f"a frame index is a whole number from 0, not {index!r}")
    p = check_video_file(path)
    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise MediaError(f"{p.name}: cannot be opened as a video")
        if index and not _seek(cap, index):
            cap.release()
            cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
            _skip(cap, index, p.name)
        ok, image = cap.read()
        if not ok or image is None or not image.size:
            raise MediaError(f"{p.name}: no frame {index} (the video is shorter)")
        return image
    finally:
        cap.release()


def _seek(cap: Any, index: int) -> bool:
    """Seek so that the next read returns frame `index`; False where the container cannot."""
    try:
        return bool(cap.set(cv2.CAP_PROP_POS_FRAMES, index)) and (
            round(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index
        )
    except cv2.error:
        return False


def _skip(cap: Any, index: int, name: str) -> None:
    if index > MAX_SEQUENTIAL_FRAMES:
        raise MediaError(
            f"{name}: cannot seek in this file, and frame {index} is too far from its start "
            f"to read up to (more than {MAX_SEQUENTIAL_FRAMES} frames)"
        )
    for _ in range(index):
        if not cap.grab():
            raise MediaError(f"{name}: no frame {index} (the video is shorter)")


def newest_frame(source: Any) -> Any | None:
    """A live source's newest frame (`sources.Frame`), whether or not `latest()` handed it
    out already, without taking it: the live picture must not steal frames from scoring.
    A stand-in source without `peek` (a test double) has no picture to offer."""
    peek = getattr(source, "peek", None)
    return peek() if callable(peek) else None
