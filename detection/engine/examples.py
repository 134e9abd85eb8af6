"""Example frames an operator gives: images, or video clips sampled at a steady rate.

A clip is read at EXAMPLE_FPS (at most MAX_CLIP_FRAMES frames), so a minute of "this is
what normal looks like" gives the memory 60 views of it, not 1,800 near-duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import MediaError
from .images import load_image
from .video import VideoReader

EXAMPLE_FPS = 1.0
MAX_CLIP_FRAMES = 600
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def example_frames(path: str | Path, fps: float = EXAMPLE_FPS) -> Iterator[np.ndarray]:
    """BGR frames of one example file: the image itself, or a clip's frames at `fps`."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: example file not found")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield load_image(path)
        return
    with VideoReader(path) as reader:
        for count, frame in enumerate(reader.frames(fps, skip_black=False)):
            if count >= MAX_CLIP_FRAMES:
                return
            yield frame.image


def read_examples(paths: Iterable[str | Path]) -> list[np.ndarray]:
    """Every frame of every example file, in order."""
    return [frame for path in paths for frame in example_frames(path)]
