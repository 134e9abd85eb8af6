"""Decoding less: how a live source turns a camera's packets into the frames it needs.

A camera sends 25 or 30 frames a second; an analysis samples one or two. Reading every frame
with `cv2.VideoCapture.read()` decodes each one and converts it to BGR, to keep one frame in
25. Two savings, chosen by `DecodeMode` (setting `DETECTION_DECODE`):

- `grab`: `grab()` every frame (it decodes: later frames need it, and it keeps the reader in
  step with the camera) and `retrieve()` (the colour conversion) only when a sample is due.
- `keyframes`: decode only keyframes (FFmpeg's `skip_frame=NONKEY`, through PyAV:
  `detection.engine.avcapture`); the other packets are read and dropped, never decoded.
  A stream with a keyframe a second then costs one decode a second instead of 25.
- `auto` (the default): keyframes while the sampling interval is at least the stream's
  keyframe interval (GOP, measured from the first keyframes' timestamps), else every frame
  decoded and only the due ones converted. Webcams have no keyframes: `grab`.
- `all`: every frame decoded and converted (the behaviour without a sampling interval).

`Sampler` decides when a sample is due; `Capture` is what both backends offer the reader
loop of `detection.engine.sources.LiveSource`. Django-free, like the rest of the engine.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Protocol

import cv2
import numpy as np


class DecodeMode(StrEnum):
    AUTO = "auto"
    ALL = "all"
    GRAB = "grab"
    KEYFRAMES = "keyframes"


DECODE_MODES = tuple(mode.value for mode in DecodeMode)
# A GOP this much longer than the interval still counts as "at most the interval": stream
# timestamps are rounded (a 1 s GOP at 29.97 fps measures 1.001 s).
GOP_TOLERANCE = 1.02


class DecodeError(Exception):
    """A stream whose packets keep failing to decode (the reader reconnects)."""


def decode_mode(value: object) -> DecodeMode:
    """`value` as a DecodeMode, or ValueError naming the values allowed."""
    try:
        return DecodeMode(str(value).strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown decode mode {value!r}; expected one of {', '.join(DECODE_MODES)}"
        ) from None


def keyframes_suffice(gop_s: float | None, interval_s: float | None) -> bool:
    """Whether sampling every `interval_s` can live on keyframes `gop_s` apart."""
    return gop_s is not None and interval_s is not None and gop_s <= interval_s * GOP_TOLERANCE


class Capture(Protocol):
    """An opened camera, file or stream, read one frame at a time by one thread."""

    fps: float | None  # the frame rate the container announces, if any
    keyframes_only: bool  # whether only keyframes are decoded now
    gop_s: float | None  # seconds between keyframes, once two were seen (None: unknown)

    def grab(self) -> bool:
        """Go to the next frame; False when there is none (ended, dropped, timed out)."""

    def retrieve(self) -> np.ndarray | None:
        """The grabbed frame as BGR; None when it cannot be had (a frame that was not
        decoded, a decoder still filling up)."""

    def rewind(self) -> bool:
        """Start over from the first frame (files); False where it cannot."""

    def release(self) -> None: ...


class CVCapture:
    """OpenCV's `VideoCapture` as a `Capture`: `read()` is its `grab()` + `retrieve()`."""

    keyframes_only = False
    gop_s = None

    def __init__(self, cap: cv2.VideoCapture) -> None:
        self.cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else None

    def grab(self) -> bool:
        return bool(self.cap.grab())

    def retrieve(self) -> np.ndarray | None:
        ok, image = self.cap.retrieve()
        return image if ok and image is not None and image.size else None

    def rewind(self) -> bool:
        return bool(self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def release(self) -> None:
        self.cap.release()


class Sampler:
    """When the reader thread converts the frame it just grabbed.

    Every frame while `interval_s` is None. Otherwise about every `interval_s`: a sample is
    due `interval_s` minus a little slack after the last one (the slack, a tenth of the
    interval or one frame at most, keeps the samples from falling behind a consumer asking
    exactly every interval, as frames arrive on their own grid). A consumer that says when it
    will ask next (`take_at`, the worker's schedule) gets a frame converted just before
    then, `lead()` seconds ahead: what it is handed is at most about that old, instead of up
    to an interval. Without that, a consumer sees frames up to `interval_s` old.
    """

    def __init__(self, interval_s: float | None) -> None:
        self.interval_s = interval_s
        self.last = -math.inf  # monotonic time of the last sample
        self.take_at: float | None = None  # when the consumer asks next (monotonic)
        # Seconds between frames that can be sampled: a frame period, or the GOP while only
        # keyframes are decoded. Measured by the reader; 25 fps until then.
        self.cadence_s = 0.04
        self.cost_s = 0.0  # what a retrieve costs (measured): the lead covers it

    def lead(self) -> float:
        """How long before a consumer's ask its frame is taken: the next sampleable frame
        arrives within one cadence, and 1.5 cover arrival jitter, plus the retrieve."""
        return 1.5 * self.cadence_s + 2 * self.cost_s + 0.01

    def due_at(self) -> float:
        """When the next frame should be converted (monotonic; -inf: every frame)."""
        if self.interval_s is None:
            return -math.inf
        # On its own: an interval after the last sample, less a little slack.
        regular = self.last + self.interval_s - min(0.1 * self.interval_s, self.cadence_s)
        if self.take_at is None:
            return regular
        # Told when the consumer asks next: just before then, so its frame is fresh. One
        # sample serves both when that is sooner or not much later (a consumer asking every
        # interval keeps the samples in step with itself); a much later ask (the interval
        # was shortened for a watcher) does not hold back the regular sample.
        wanted = self.take_at - self.lead()
        return wanted if wanted <= self.last + 1.5 * self.interval_s else regular

    def due(self, now: float) -> bool:
        return now >= self.due_at()

    def sampled(self, now: float) -> None:
        take_at = self.take_at
        if take_at is not None and now >= take_at - self.lead():
            self.take_at = None  # served
        self.last = now
