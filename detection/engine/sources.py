"""Live frame sources: webcams and network streams that never hang and never go stale.

    source = open_source("stream", "rtsp://cam.local/live")
    source.start()
    frame = source.latest(timeout=1.0)  # the newest frame not yet returned, or None
    source.stop()

Each `LiveSource` reads in one daemon thread into a one-frame slot that keeps only the
newest frame, so a slow scorer always sees what the camera shows now, never a backlog.
Opens and reads have timeouts (OpenCV's FFmpeg backend honours CAP_PROP_OPEN_TIMEOUT_MSEC
and CAP_PROP_READ_TIMEOUT_MSEC); a failed open, a dropped or a stalled stream is reopened
with capped exponential backoff and jitter, and reopen attempts are rate-limited so a
flapping camera cannot spin the CPU. Status changes (`SourceStatus`, same values as
`Camera.Status`) are read from `status`, `last_error` and `reconnects`, which the worker
polls and stores on the camera; `on_status` is an optional callback for scripts and tests.

File cameras are not read here: the engine's `detection.engine.video.VideoReader` reads
files sequentially without dropping a frame. `PacedFileSource` plays a file in real time as
a simulated live camera for tests and demos.

Stream URLs follow the one rule of `detection.engine.netpolicy` (the admin's too), and
every open is preceded by a fresh check of what the host resolves to: a DNS answer that
changed since the camera was saved cannot send FFmpeg to a metadata service. FFmpeg
resolves the name again itself, so a rebinding in between remains possible (see
docs/security.md, "Outbound requests: the trust model").

Django-free on purpose (no Django or ORM imports): the worker, the API and scripts use it.
The portal hands in its settings through `use_camera_policy` (cameras.validators).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# The engine is Django-free like this module; its content check decides what FFmpeg may open,
# its netpolicy where a stream may connect. STREAM_SCHEMES and redact stay importable from
# here: one definition each, in netpolicy.
from detection.engine.errors import MediaError
from detection.engine.netpolicy import (
    STREAM_SCHEMES,
    AddressError,
    NetworkPolicy,
    RefusedAddress,
    Target,
    camera_policy,
    parse_url,
    redact,
)
from detection.engine.video import check_video_file

# Same as detection.engine: FFmpeg and OpenCV chatter ("Stream timeout triggered") would
# flood the worker's stderr on every failed attempt; the source reports errors itself.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

log = logging.getLogger(__name__)

ASSUMED_FPS = 25.0


class SourceStatus(StrEnum):
    """Same values as `cameras.models.Camera.Status`."""

    ONLINE = "online"  # frames arrive
    RECONNECTING = "reconnecting"  # an open or read failed; retrying with backoff
    OFFLINE = "offline"  # not read (stopped, or ended), or `max_failures` attempts in a row failed
    FAILED = "failed"  # cannot be read at all (a missing or undecodable file); no retry


class SourceError(ValueError):
    """A source that cannot be used as configured (bad URL, bad index, missing file)."""


class SourceRefused(SourceError):
    """A stream whose address the camera policy refuses: final, never retried."""


# The policy a stream gets when its caller passes none. Without Django it is the built-in
# default (LAN yes, loopback no); the portal installs one that reads its settings.
_default_policy: Callable[[], NetworkPolicy] = camera_policy


def use_camera_policy(provider: Callable[[], NetworkPolicy]) -> None:
    """Make `provider()` the policy of streams opened without one (called per stream)."""
    global _default_policy
    _default_policy = provider


StatusCallback = Callable[["SourceStatus", str], None]  # (status, error text or "")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8
    index: int  # frames read since the source started, counted across reconnects, from 0
    time_s: float  # seconds since the source started (monotonic clock)
    captured_at: datetime  # aware UTC time the frame was read


@dataclass(frozen=True)
class Backoff:
    """Reconnect policy; the defaults suit real cameras, tests pass small values."""

    initial_s: float = 0.5  # first wait after a failure, doubled on each further failure
    cap_s: float = 30.0  # longest wait; offline sources retry at this pace
    jitter: float = 0.2  # each wait is shortened by up to this fraction, so cameras desync
    max_failures: int = 5  # failed attempts in a row (no frame in between) before offline
    max_opens: int = 12  # at most this many open attempts ...
    per_s: float = 60.0  # ... in any window of this many seconds

    def __post_init__(self) -> None:
        if not (
            0 <= self.initial_s <= self.cap_s < math.inf
            and 0 <= self.jitter < 1
            and self.max_failures >= 1
            and self.max_opens >= 1
            and 0 < self.per_s < math.inf
        ):
            raise SourceError(f"unusable reconnect policy: {self}")

    def delay(self, failures: int) -> float:
        """Wait before the next attempt after `failures` failed attempts in a row."""
        if failures >= self.max_failures:
            base = self.cap_s
        else:
            base = min(self.cap_s, self.initial_s * 2 ** max(0, failures - 1))
        return base * (1.0 - self.jitter * random.random())


def _stream_target(url: object, policy: NetworkPolicy) -> Target:
    """The parsed URL if it passes the stream URL rule; an IP address host is checked too."""
    try:
        target = parse_url(url, STREAM_SCHEMES, "stream URL")
    except AddressError as error:
        raise SourceError(str(error)) from None
    try:
        policy.check_literal(target)  # names are checked (resolved) at each open
    except AddressError as error:
        raise SourceRefused(str(error)) from None
    return target


class _Ended(Exception):
    """Raised by `_read` when a source ends for good; a message means it failed."""


class LiveSource:
    """A camera read in its own thread; `latest()` hands out the newest frame.

    - `status` starts offline (nobody reads it yet), turns online with the first frame,
      reconnecting when an open or read fails, offline after `backoff.max_failures` failed
      attempts in a row (still retrying, at `backoff.cap_s`) and again once stopped.
    - `on_status(status, error)` is called on every change of (status, error), from the
      reader thread: keep it short (store it, or hand it over); an exception in it is logged.
    - `latest()` is meant for one consumer; each frame is handed out at most once.
    - Not restartable: make a new source after `stop()`.

    Subclasses implement `_open()` (return an opened capture or raise `SourceError` with
    the reason) and may override `_read()`.
    """

    kind = "live"
    retry = True  # False: an open failure is final (status failed)

    def __init__(
        self,
        *,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        on_status: StatusCallback | None = None,
        name: str | None = None,
    ) -> None:
        for label, value in (("open", open_timeout_s), ("read", read_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise SourceError(f"{label} timeout must be a positive number of seconds")
        self.open_timeout_s = float(open_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.backoff = backoff or Backoff()
        self.on_status = on_status
        self.name = name or self.describe()
        self._status = SourceStatus.OFFLINE
        self._last_error = ""
        self._reconnects = 0
        self._open_attempts = 0
        self._failures = 0
        self._cond = threading.Condition()
        self._slot: Frame | None = None  # the newest frame, returned or not
        self._returned = -1  # index of the last frame `latest()` returned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = False  # the reader thread has finished
        self._opens: deque[float] = deque()  # monotonic times of recent open attempts
        self._t0 = 0.0

    # -- what subclasses provide -------------------------------------------------------

    def describe(self) -> str:
        """A short, password-free description for thread names and messages."""
        return self.kind

    def _open(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def _read(self, cap: cv2.VideoCapture) -> np.ndarray | None:
        ok, image = cap.read()
        return image if ok and image is not None and image.size else None

    def _read_error(self, elapsed: float) -> str:
        if elapsed >= 0.9 * self.read_timeout_s:
            return f"no frame within {self.read_timeout_s:g} s: the stream stalled"
        return "the stream ended or the connection dropped"

    # -- public interface --------------------------------------------------------------

    @property
    def status(self) -> SourceStatus:
        return self._status

    @property
    def last_error(self) -> str:
        """Why the source is not online ("" while frames arrive)."""
        return self._last_error

    @property
    def reconnects(self) -> int:
        """How many times frames came back after the source had lost them."""
        return self._reconnects

    @property
    def open_attempts(self) -> int:
        return self._open_attempts

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        """True while the reader thread is alive (False before start, after stop or end)."""
        return self._thread is not None and not self._done

    def start(self) -> LiveSource:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: a source can only be started once")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"source:{self.name}", daemon=True)
        self._thread.start()
        return self

    def latest(self, timeout: float = 0.0) -> Frame | None:
        """The newest frame not yet returned, waiting up to `timeout` s; None if none came.

        Frames the caller was too slow to take are dropped: only the newest is kept.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                frame = self._slot
                if frame is not None and frame.index > self._returned:
                    self._returned = frame.index
                    return frame
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set() or not self.running:
                    return None
                self._cond.wait(left)

    def peek(self) -> Frame | None:
        """The newest frame, whether or not `latest` returned it, without taking it: for
        watchers (the live picture) that must not steal frames from scoring."""
        with self._cond:
            return self._slot

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop reading and release the capture; True if the thread ended within `timeout`.

        A backoff wait is interrupted at once. A read blocked inside FFmpeg cannot be
        interrupted; it ends by itself within the read/open timeout and then releases.
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s: reader still blocked in FFmpeg after %.1f s", self.name, timeout)
            return False
        return True

    def __enter__(self) -> LiveSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the reader thread -------------------------------------------------------------

    def _set_status(self, status: SourceStatus, error: str = "") -> None:
        if (status, error) == (self._status, self._last_error):
            return
        self._status, self._last_error = status, error
        if error:
            log.info("%s: %s (%s)", self.name, status.value, error)
        if self.on_status is not None:
            try:
                self.on_status(status, error)
            except Exception:  # a broken callback must not kill the reader
                log.exception("%s: status callback failed", self.name)

    def _fail(self, error: str) -> None:
        self._failures += 1
        bad = self._failures >= self.backoff.max_failures
        self._set_status(SourceStatus.OFFLINE if bad else SourceStatus.RECONNECTING, error)
        self._stop.wait(self.backoff.delay(self._failures))

    def _wait_for_open_slot(self) -> None:
        """Rate limit: at most `max_opens` attempts in any `per_s` window."""
        b = self.backoff
        while not self._stop.is_set():
            now = time.monotonic()
            while self._opens and now - self._opens[0] >= b.per_s:
                self._opens.popleft()
            if len(self._opens) < b.max_opens:
                self._opens.append(now)
                return
            self._stop.wait(self._opens[0] + b.per_s - now)

    def _run(self) -> None:
        try:
            self._loop()
        except _Ended as exc:
            # A file played once ends quietly; one that never gave a frame has failed.
            reason = str(exc)
            self._set_status(SourceStatus.FAILED if reason else SourceStatus.OFFLINE, reason)
        except Exception as exc:  # report it: never die silently in a thread
            log.exception("%s: reader crashed", self.name)
            self._set_status(SourceStatus.FAILED, f"reader crashed: {exc}")
        else:
            if self._status is not SourceStatus.FAILED:
                self._set_status(SourceStatus.OFFLINE)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _loop(self) -> None:
        index = 0
        was_online = False
        while not self._stop.is_set():
            self._wait_for_open_slot()
            if self._stop.is_set():
                return
            self._open_attempts += 1
            try:
                cap = self._open()
            except (SourceError, cv2.error) as exc:
                if isinstance(exc, cv2.error):
                    exc = SourceError(f"cannot open {self.name}: {exc.msg or exc}")
                if not self.retry or isinstance(exc, SourceRefused):
                    self._set_status(SourceStatus.FAILED, str(exc))
                    return
                self._fail(str(exc))
                continue
            error = ""
            try:
                while not self._stop.is_set():
                    started = time.monotonic()
                    try:
                        image = self._read(cap)
                    except cv2.error as exc:
                        error = f"cannot decode the stream: {exc.msg or exc}"
                        break
                    if image is None:
                        error = self._read_error(time.monotonic() - started)
                        break
                    now = time.monotonic()
                    frame = Frame(image, index, now - self._t0, datetime.now(UTC))
                    index += 1
                    with self._cond:
                        self._slot = frame
                        self._cond.notify_all()
                    if self._status is not SourceStatus.ONLINE:
                        if was_online:
                            self._reconnects += 1
                        was_online = True
                        self._failures = 0
                        self._set_status(SourceStatus.ONLINE)
            finally:
                cap.release()
            if error and not self._stop.is_set():
                self._fail(error)


class StreamSource(LiveSource):
    """An rtsp/rtsps/http/https stream read with OpenCV's FFmpeg backend.

    RTSP over UDP loses frames on busy networks; operators may set
    OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp" before starting the worker.
    """

    kind = "stream"

    def __init__(self, url: str, *, policy: NetworkPolicy | None = None, **options: Any) -> None:
        self.policy = policy or _default_policy()
        self.target = _stream_target(url, self.policy)
        self.url = self.target.url
        super().__init__(**options)

    def describe(self) -> str:
        return redact(self.url)

    def _check_address(self) -> None:
        """Resolve the host now and check every address, right before FFmpeg opens it."""
        try:
            self.policy.check(self.target)
        except RefusedAddress as error:
            raise SourceRefused(f"cannot open {self.describe()}: {error}") from None
        except AddressError as error:  # does not resolve (yet): retried with backoff
            raise SourceError(f"cannot open {self.describe()}: {error}") from None

    def _open(self) -> cv2.VideoCapture:
        self._check_address()
        started = time.monotonic()
        cap = cv2.VideoCapture(
            self.url,
            cv2.CAP_FFMPEG,
            [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                round(self.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                round(self.read_timeout_s * 1000),
            ],
        )
        if cap.isOpened():
            return cap
        cap.release()
        if time.monotonic() - started >= 0.9 * self.open_timeout_s:
            reason = f"no answer within {self.open_timeout_s:g} s"
        else:
            reason = "connection refused or not a readable video stream"
        raise SourceError(f"cannot open {self.describe()}: {reason}")


class WebcamSource(LiveSource):
    """A local camera by device index (V4L2 on Linux); OpenCV has no open timeout here."""

    kind = "webcam"

    def __init__(self, index: int, **options: Any) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise SourceError(f"a webcam is a device index such as 0 or 1, not {index!r}")
        self.index = index
        super().__init__(**options)

    def describe(self) -> str:
        return f"webcam {self.index}"

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.describe()}: no such device, or it is busy")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # drivers that honour it keep no stale frames
        return cap


class PacedFileSource(LiveSource):
    """A video file played at its own frame rate in real time: a simulated live camera.

    With `loop` it starts over at the end; without, the source ends (status offline). A
    file that cannot be opened or decoded is final (status failed).
    """

    kind = "file"
    retry = False

    def __init__(self, path: str | Path, loop: bool = True, **options: Any) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file")
        try:
            check_video_file(self.path)  # local containers only: no playlists, no URLs
        except MediaError as error:
            raise SourceError(str(error)) from None
        self.loop = loop
        self.fps = ASSUMED_FPS
        self._due = 0.0  # monotonic time the next frame is due
        self._decoded = 0
        super().__init__(**options)

    def describe(self) -> str:
        return f"file {self.path.name}"

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: cannot be opened as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else ASSUMED_FPS
        self._due = time.monotonic()
        return cap

    def _read(self, cap: cv2.VideoCapture) -> np.ndarray | None:
        image = super()._read(cap)
        if image is None and self.loop and self._decoded and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            image = super()._read(cap)
        if image is None:
            raise _Ended("" if self._decoded else f"{self.path}: no frame could be decoded")
        self._decoded += 1
        # Frame k is due at start + k / fps: sleeping to a schedule does not drift.
        self._stop.wait(max(0.0, self._due - time.monotonic()))
        self._due = max(self._due + 1.0 / self.fps, time.monotonic() - 1.0)
        return None if self._stop.is_set() else image


def open_source(
    kind: str, source: str | int, *, policy: NetworkPolicy | None = None, **options: Any
) -> LiveSource:
    """A (not yet started) live source for a camera of `kind` "webcam" or "stream".

    `source` is a device index (an int or a string of digits) or a stream URL; `options`
    go to `LiveSource` (timeouts, `backoff`, `on_status`); `policy` decides which addresses
    a stream may reach (default: the one `use_camera_policy` installed). File cameras are
    not live: the engine's `VideoReader` reads them sequentially without dropping frames.
    """
    if kind == "webcam":
        text = source.strip() if isinstance(source, str) else ""
        # ASCII digits only: isdigit() also accepts "²", which int() refuses.
        if text.isascii() and text.isdigit():
            source = int(text)
        return WebcamSource(source, **options)  # type: ignore[arg-type]
    if kind == "stream":
        if not isinstance(source, str):
            raise SourceError(f"a stream source is a URL, not {source!r}")
        return StreamSource(source, policy=policy, **options)
    if kind == "file":
        raise SourceError("file cameras are read by detection.engine.video.VideoReader")
    raise SourceError(f"unknown camera kind {kind!r}; expected 'webcam' or 'stream'")
