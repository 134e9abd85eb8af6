"""Short H.264 clips around incidents, encoded as frames arrive (Django-free).

Browsers play H.264 in MP4 when it is yuv420p with even dimensions (checked in Debian's
Chromium); `+faststart` moves the index to the front, so playback starts before the file has
downloaded and a seek needs one Range request. x264 runs with `zerolatency`: no look-ahead
queue, so a clip of any length costs the memory of a few frames, and one thread, so a clip
never competes with scoring for more than one core.

A clip appears under its final name only once complete: it is written to a temporary name
in the same folder and renamed (atomic on POSIX), so a reader never gets half a file.

Timestamps are the frames' own (seconds of the video or stream), kept as milliseconds: a
live camera's frames do not arrive on a perfect grid, and the clip keeps their real spacing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import MediaError
from .stills import resize_to

CLIP_PRE_S = 5.0  # seconds shown before an incident starts
CLIP_POST_S = 5.0  # and after it ends
MAX_CLIP_S = 120.0  # a longer incident's clip stops here (its first two minutes)
MAX_WIDTH = 640
MIN_FILE_FPS = 5.0  # files are re-read at least this often (or the source's own rate)
_MS = Fraction(1, 1000)
# x264 settings: fast enough for a 2-core machine, small files (about 15-60 KB/s at 640 px).
_X264 = {"preset": "veryfast", "tune": "zerolatency", "crf": "28"}


def clip_size(width: int, height: int, max_width: int = MAX_WIDTH) -> tuple[int, int]:
    """At most `max_width` wide, aspect kept, both sides even (yuv420p needs it)."""
    if width > max_width:
        height, width = round(height * max_width / width), max_width
    return max(2, width - width % 2), max(2, height - height % 2)


def shrink(image: np.ndarray, max_width: int = MAX_WIDTH) -> np.ndarray:
    """`image` at its clip size (clip_size)."""
    return resize_to(image, clip_size(image.shape[1], image.shape[0], max_width))


@dataclass(frozen=True)
class ClipStats:
    frames: int
    seconds: float  # first to last frame, plus one frame's duration
    bytes: int
    encode_s: float  # time spent in add() and finish(): resizing, converting, encoding


class ClipWriter:
    """One clip, written frame by frame: `add(image, time_s)` then `finish()` (or `abort()`).

    Frames must come in time order; one not later than the previous (by a millisecond) is
    dropped. After `max_seconds` of video, `add` refuses more frames (`full`).
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        *,
        max_seconds: float = MAX_CLIP_S,
        max_width: int = MAX_WIDTH,
    ) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".part")
        self.fps = max(0.1, float(fps))
        self.max_seconds = max_seconds
        self.max_width = max_width
        self.frames = 0
        self.first_s: float | None = None
        self.last_s: float | None = None
        self.encode_s = 0.0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._size: tuple[int, int] | None = None
        self._last_pts = -1

    @property
    def full(self) -> bool:
        return (
            self.last_s is not None
            and self.first_s is not None
            and (self.last_s - self.first_s >= self.max_seconds)
        )

    def _open(self, width: int, height: int) -> None:
        self._size = clip_size(width, height, self.max_width)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(
            str(self.partial), "w", format="mp4", options={"movflags": "+faststart"}
        )
        try:
            stream = container.add_stream(
                "libx264", rate=Fraction(self.fps).limit_denominator(1000)
            )
            stream.width, stream.height = self._size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = _MS
            stream.codec_context.thread_count = 1
            stream.options = dict(_X264)
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream

    def add(self, image: np.ndarray, time_s: float) -> bool:
        """Encode one BGR frame shown at `time_s`; False when it was not taken."""
        if self.full:
            return False
        started = time.perf_counter()
        try:
            if self._container is None:
                self._open(image.shape[1], image.shape[0])
            if self.first_s is None:
                self.first_s = time_s
            pts = round((time_s - self.first_s) * 1000)
            if pts <= self._last_pts:
                return False
            assert self._stream is not None and self._container is not None and self._size
            # Also a camera that changed resolution mid-clip: the clip keeps its size.
            image = resize_to(image, self._size)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts, frame.time_base = pts, _MS
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self._last_pts, self.last_s = pts, time_s
            self.frames += 1
            return True
        finally:
            self.encode_s += time.perf_counter() - started

    def finish(self) -> ClipStats | None:
        """Flush, close and move the clip into place; None (and no file) without frames."""
        if self._container is None or self.frames == 0:
            self.abort()
            return None
        started = time.perf_counter()
        try:
            assert self._stream is not None
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self.partial, self.path)
        except BaseException:
            self.abort()
            raise
        self.encode_s += time.perf_counter() - started
        assert self.first_s is not None and self.last_s is not None
        return ClipStats(
            frames=self.frames,
            seconds=self.last_s - self.first_s + 1.0 / self.fps,
            bytes=self.path.stat().st_size,
            encode_s=self.encode_s,
        )

    def abort(self) -> None:
        """Drop what was written (nothing appears under the final name)."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass  # closing a broken encoder; the partial file goes anyway
            self._container = None
        self.partial.unlink(missing_ok=True)


def read_range(
    source: Path, start_s: float, end_s: float, fps: float
) -> Iterator[tuple[float, np.ndarray]]:
    """(time_s, BGR image) of `source` from `start_s` to `end_s` at most `fps` per second.

    Seeks to the key frame before `start_s` (a clip of the end of a long file does not decode
    the whole file), then decodes forward. Times are seconds from the stream's first frame,
    as the worker's frame times are for files of constant rate.
    """
    try:
        container = av.open(str(source))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{Path(source).name}: cannot open for a clip: {exc}") from None
    try:
        if not container.streams.video:
            raise MediaError(f"{Path(source).name}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base or _MS
        offset = float(stream.start_time * base) if stream.start_time is not None else 0.0
        if start_s > 1.0:
            try:
                container.seek(int((start_s + offset) / base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0, stream=stream)  # some AVI files cannot seek: decode from 0
        step = 1.0 / fps
        next_s = start_s
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * base) - offset
            if t > end_s:
                break
            if t + 1e-6 < next_s:
                continue
            next_s = max(next_s + step, t + step * 0.5)  # keep the grid, never bunch up
            yield t, frame.to_ndarray(format="bgr24")
    except av.FFmpegError as exc:
        raise MediaError(f"{Path(source).name}: cannot decode for a clip: {exc}") from None
    finally:
        container.close()


def source_fps(source: Path) -> float | None:
    """The video stream's average frame rate, when the file says."""
    try:
        with av.open(str(source)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except (av.FFmpegError, OSError):
        return None
    return float(rate) if rate else None


def write_file_clip(
    source: Path,
    dest: Path,
    start_s: float,
    end_s: float,
    sampling_fps: float,
    *,
    max_seconds: float = MAX_CLIP_S,
) -> ClipStats | None:
    """The clip of `source` from `start_s` to `end_s` (clamped to the file and to
    `max_seconds`), at max(sampling_fps, MIN_FILE_FPS) frames/s but no more than the source
    has; None when no frame fell in the range."""
    native = source_fps(source)
    fps = max(sampling_fps, MIN_FILE_FPS)
    if native:
        fps = min(fps, native)
    start_s = max(0.0, start_s)
    end_s = min(end_s, start_s + max_seconds)
    writer = ClipWriter(dest, fps, max_seconds=max_seconds)
    try:
        for t, image in read_range(source, start_s, end_s, fps):
            writer.add(image, t)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
