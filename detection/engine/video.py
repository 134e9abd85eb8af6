"""Sampling frames from video files: sequential decoding, honest timestamps.

Seeking by frame number is slow and inaccurate with most codecs, so every frame is decoded
in order; frames between samples are only `grab()`bed (decoded, not colour-converted).
Header frame counts and rates are often wrong (see shared/data/README.md), so the stream
is counted as it decodes and `VideoStats` says where the header disagreed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import MediaError
from .limits import MAX_SAMPLING_FPS
from .media import container_kind, declared_shortfall, image_kind, require_nonempty_file, sniff

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
ASSUMED_FPS = 25.0
DEFAULT_BLACK_LEVEL = 10.0  # mean intensity (0-255) under which a frame counts as black


@dataclass(frozen=True)
class SampledFrame:
    index: int  # position in the decoded stream, from 0
    time_s: float  # index / fps
    image: np.ndarray  # BGR uint8


@dataclass
class VideoStats:
    """What the header claimed and what decoding found; filled in while frames are read."""

    path: str
    width: int
    height: int
    codec: str
    fps: float  # the rate timestamps are computed with
    fps_source: str  # "header" or "assumed" (header rate missing or absurd)
    header_fps: float
    header_frames: int
    frames_decoded: int = 0
    frames_sampled: int = 0
    black_frames_skipped: int = 0
    finished: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return self.frames_decoded / self.fps

    @property
    def header_mismatch(self) -> bool:
        return (
            self.finished and self.header_frames > 0 and self.header_frames != self.frames_decoded
        )

    @property
    def ended_early(self) -> bool:
        return self.finished and self.frames_decoded < self.header_frames

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            total_seconds=self.total_seconds,
            header_mismatch=self.header_mismatch,
            ended_early=self.ended_early,
        )
        return data


def mean_intensity(image: np.ndarray) -> float:
    """`image.mean()` (0-255) of a uint8 image, 8x faster: OpenCV's SIMD per-channel means."""
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels > 4:
        return float(image.mean())
    return sum(cv2.mean(image)[:channels]) / channels


def is_black(image: np.ndarray, level: float = DEFAULT_BLACK_LEVEL) -> bool:
    """A black (or nearly black) frame: a covered lens, a camera starting up, a fade."""
    return mean_intensity(image) < level


def samples_through(index: int, fps: float, sampling_fps: float) -> int:
    """How many of `VideoReader.frames`' samples lie at or before frame `index` (0 for -1):
    sample k is frame ceil(k * fps / sampling_fps), and every frame when sampling faster than
    the video. With the header's last index, the number of samples expected from the file."""
    if index < 0:
        return 0
    step = fps / sampling_fps
    if step <= 1:
        return index + 1
    return math.floor((index + 1e-9) / step) + 1


def validate_sampling_fps(sampling_fps: float) -> float:
    try:
        value = float(sampling_fps)
    except (TypeError, ValueError):
        raise MediaError(f"sampling rate {sampling_fps!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise MediaError(
            f"sampling rate must be a positive number of frames/s, got {sampling_fps!r}"
        )
    if value > MAX_SAMPLING_FPS:
        raise MediaError(
            f"sampling rate {value:g} frames/s is above the cap of {MAX_SAMPLING_FPS:g}"
        )
    return value


def check_video_file(path: str | Path) -> Path:
    """Reject what is certainly not a local video before FFmpeg sees it."""
    p = require_nonempty_file(path, "video")
    if p.suffix.lower() not in VIDEO_EXTENSIONS:
        raise MediaError(
            f"{p}: unsupported extension {p.suffix or '(none)'!r}; "
            f"expected one of {', '.join(VIDEO_EXTENSIONS)}"
        )
    head = sniff(p)
    kind = image_kind(head)
    if kind:
        raise MediaError(f"{p}: this is a {kind} image, not a video")
    if head.lstrip().startswith((b"#EXTM3U", b"<?xml", b"<MPD", b"ffconcat", b"v=0")):
        # Playlists, manifests and session descriptions make FFmpeg open other files or
        # URLs; we read local files only.
        raise MediaError(f"{p}: this is a playlist or manifest, not a video file")
    if container_kind(head) is None:
        # The reason stays short: it is shown on the upload page as it is.
        raise MediaError(f"{p}: not an MP4/MOV, AVI or Matroska/WebM file")
    return p


class VideoReader:
    """Opens a video file and yields sampled frames; `stats` describes the stream."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_video_file(path)
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise MediaError(
                f"{self.path}: cannot be opened as a video (corrupt, truncated, or not a video)"
            )
        self._cap = cap
        header_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps_ok = math.isfinite(header_fps) and 0 < header_fps <= 1000
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
        codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
        self.stats = VideoStats(
            path=str(self.path),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
            codec=codec if codec.isprintable() else "",
            fps=header_fps if fps_ok else ASSUMED_FPS,
            fps_source="header" if fps_ok else "assumed",
            header_fps=header_fps if math.isfinite(header_fps) else 0.0,
            header_frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
        )
        shortfall = declared_shortfall(self.path)
        self.truncated = shortfall is not None
        if shortfall:
            # Uploads refuse such files (detection/web uploads); a file given to the CLI, the
            # API or a file camera is analysed as far as it decodes, and says so.
            self.stats.warnings.append(f"{shortfall}; only the frames present are analysed")
        if not fps_ok:
            self.stats.warnings.append(
                f"header frame rate {header_fps!r} is unusable; "
                f"timestamps assume {ASSUMED_FPS:g} fps"
            )

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(
        self,
        sampling_fps: float,
        *,
        start_index: int = 0,
        skip_black: bool = True,
        black_level: float = DEFAULT_BLACK_LEVEL,
        on_progress: Callable[[VideoStats], None] | None = None,
    ) -> Iterator[SampledFrame]:
        """Yield frames at `sampling_fps`; frames before `start_index` are decoded, not yielded.

        Sample k is the first frame at or after time k / sampling_fps, so the samples do not
        drift on non-integer rates (29.97 fps sampled at 1 fps gives frames 0, 30, 60, 90...).
        """
        sampling_fps = validate_sampling_fps(sampling_fps)
        stats, cap = self.stats, self._cap
        step = stats.fps / sampling_fps
        k = math.ceil(start_index / step - 1e-9) if start_index > 0 else 0
        next_index = math.ceil(k * step - 1e-9)
        index = 0
        while True:
            if index < next_index:
                if not cap.grab():
                    break
            else:
                ok, image = cap.read()
                if not ok or image is None:
                    break
                k += 1
                next_index = max(index + 1, math.ceil(k * step - 1e-9))
                if skip_black and is_black(image, black_level):
                    stats.black_frames_skipped += 1
                else:
                    stats.frames_sampled += 1
                    stats.frames_decoded = index + 1
                    yield SampledFrame(index, index / stats.fps, image)
            index += 1
            stats.frames_decoded = index
            if on_progress is not None and index % 25 == 0:
                on_progress(stats)
        stats.finished = True
        if on_progress is not None:
            on_progress(stats)
        if stats.frames_decoded == 0:
            raise MediaError(
                f"{self.path}: no frame could be decoded (corrupt, truncated, or an unsupported "
                f"codec{' ' + stats.codec if stats.codec else ''})"
            )
        # Containers often count one frame too many (shared/data/box.mp4); only a real
        # shortfall suggests a truncated file.
        if (
            not self.truncated  # then the container's own warning says it exactly
            and stats.ended_early
            and stats.header_frames - stats.frames_decoded > max(1, stats.header_frames // 100)
        ):
            stats.warnings.append(
                f"the header announces {stats.header_frames} frames but only "
                f"{stats.frames_decoded} decode: the file may be truncated"
            )
        elif stats.header_mismatch:
            stats.warnings.append(
                f"the header announces {stats.header_frames} frames "
                f"but {stats.frames_decoded} decode"
            )
