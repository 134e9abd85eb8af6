"""Synthetic frames and video files: nothing is downloaded, everything is made on the fly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

# Container/codec pairs OpenCV's bundled FFmpeg writes on this machine (H.264 it cannot).
CONTAINERS = {
    "mp4": "mp4v",
    "mov": "mp4v",
    "m4v": "mp4v",
    "mkv": "mp4v",
    "avi": "MJPG",
    "webm": "VP90",
}

# The `make_video` fixture: make_video(name, frames=20, fps=10.0, size=(320, 240), black=(),
# codec=None) -> the path of a new clip in the test's tmp_path.
VideoFactory = Callable[..., Path]


def scene(height: int = 240, width: int = 320, seed: int = 0, t: float = 0.0) -> np.ndarray:
    """A real-looking BGR frame: gradients, edges, shapes, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            120 + 80 * np.sin(x / width * 3 + seed),
            100 + 60 * np.cos(y / height * 4 + seed),
            90 + 50 * np.sin((x + y) / (width + height) * 5),
        ],
        axis=-1,
    )
    for i in range(6):
        cx = int((rng.uniform(0.1, 0.9) * width + t * 20 * (i + 1)) % width)
        cy = int(rng.uniform(0.1, 0.9) * height)
        r = int(rng.uniform(0.05, 0.2) * min(height, width))
        cv2.circle(img, (cx, cy), r, rng.uniform(0, 255, 3).tolist(), -1)
    cv2.rectangle(img, (width // 8, height // 2), (width // 3, height - 10), (30, 200, 40), 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(
    path: Path,
    frames: int = 20,
    fps: float = 10.0,
    size: tuple[int, int] = (320, 240),
    black: Sequence[int] = (),
    codec: str | None = None,
) -> Path:
    """A clip of moving `scene`s (the frames listed in `black` black), in `path`'s container."""
    fourcc = codec or CONTAINERS[path.suffix.lstrip(".").lower()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} in {path.suffix}"
    for i in range(frames):
        frame = (
            np.zeros((size[1], size[0], 3), np.uint8)
            if i in black
            else scene(size[1], size[0], seed=1, t=i / fps)
        )
        writer.write(frame)
    writer.release()
    return path


def covered(frame: np.ndarray) -> np.ndarray:
    """A hand or a cloth over the lens: a dark, almost flat frame."""
    noise = np.random.default_rng(0).normal(0, 3, frame.shape)
    return np.clip(25 + noise, 0, 255).astype(np.uint8)


def write_tampered_video(
    path: Path, learn_s: float = 10, normal_s: float = 4, covered_s: float = 4, fps: float = 4
) -> Path:
    """A clip of `scene`: `learn_s` + `normal_s` seconds as usual, then the lens covered for
    `covered_s`, then as usual again for `normal_s` (MJPG, whatever the suffix)."""
    height, width = 240, 320
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    start, end = learn_s + normal_s, learn_s + normal_s + covered_s
    total = end + normal_s
    for i in range(round(total * fps)):
        t = i / fps
        frame = scene(height, width, seed=1, t=t)
        writer.write(covered(frame) if start <= t < end else frame)
    writer.release()
    return path


def frame_level(n: int) -> int:
    """The grey level of frame `n` in `write_h264`'s clips: a decoded frame's median is
    within 5 of its own level and 8 or more from its neighbours'."""
    return 20 + (n * 13) % 210


def write_h264(
    path: Path,
    seconds: float = 3.0,
    fps: int = 25,
    gop: int = 25,
    size: tuple[int, int] = (320, 240),
    bframes: int = 0,
) -> Path:
    """An H.264 clip (PyAV's libx264; OpenCV cannot write H.264 here) with a keyframe every
    `gop` frames exactly (no scene-cut keyframes), frame n a flat grey of `frame_level(n)`
    with its number on it."""
    import av  # the worker's dependency; imported here so other tests never load it

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
        }
        for n in range(round(seconds * fps)):
            image = np.full((height, width, 3), frame_level(n), np.uint8)
            cv2.putText(image, str(n), (8, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0,) * 3, 2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
