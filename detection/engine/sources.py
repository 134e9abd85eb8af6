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

Decoding less (issue 16): a source given `sample_interval_s` (the worker passes
1/sampling rate) converts, or decodes, only the frames it needs: see
`detection.engine.capture` for the modes (`decode`, setting DETECTION_DECODE). Without an
interval every frame is read, as before.

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
from detection.engine.capture import (
    Capture,
    CVCapture,
    DecodeError,
    DecodeMode,
    Sampler,
    decode_mode,
    keyframes_suffice,
)
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
# A due sample that no frame could serve for this long (nothing decodes) drops the stream
# (with keyframes only: 2.5 GOPs, if longer).
UNDECODABLE_S = 20.0


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
    # Frames read (grabbed) since the source started, counted across reconnects, from 0:
    # with a sampling interval, the frames in between were read but not handed out.
    index: int
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
    - `sample_interval_s` (None: every frame): frames are converted (or decoded, per
      `decode`) only about this often; `latest()` and `peek()` see those. It may change
      while the source runs (a watcher wanting more). `will_take(at)` tells the source when
      the consumer calls `latest()` next, so the frame it gets is fresh (capture.Sampler).
    - Not restartable: make a new source after `stop()`.

    Subclasses implement `_open()` (return an opened `Capture` or raise `SourceError` with
    the reason) and may override `_grab()`.
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
        sample_interval_s: float | None = None,
        decode: DecodeMode | str = DecodeMode.AUTO,
    ) -> None:
        for label, value in (("open", open_timeout_s), ("read", read_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise SourceError(f"{label} timeout must be a positive number of seconds")
        self.open_timeout_s = float(open_timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        try:
            self.decode = decode_mode(decode)
        except ValueError as error:
            raise SourceError(str(error)) from None
        self._sampler = Sampler(_interval(sample_interval_s))
        self._decoding = DecodeMode.ALL  # what the open capture does (`decoding`)
        self._grabbed = 0
        self._sampled = 0
        self._was_online = False  # a frame came once: coming back later is a reconnect
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

    def _open(self) -> Capture:
        raise NotImplementedError

    def _grab(self, cap: Capture) -> bool:
        """Go to the next frame; False when the stream ended, dropped or stalled."""
        return cap.grab()

    def _keyframes_wanted(self, gop_s: float | None) -> bool:
        """Whether a PyAV capture decodes keyframes only, given the GOP it measured."""
        if self.decode is DecodeMode.KEYFRAMES:
            return True
        return self.decode is DecodeMode.AUTO and keyframes_suffice(gop_s, self._sampler.interval_s)

    @property
    def _skips_decoding(self) -> bool:
        """Whether opens go through PyAV (which can skip decoding) rather than OpenCV."""
        return self._sampler.interval_s is not None and self.decode in (
            DecodeMode.AUTO,
            DecodeMode.KEYFRAMES,
        )

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
    def sample_interval_s(self) -> float | None:
        return self._sampler.interval_s

    @sample_interval_s.setter
    def sample_interval_s(self, value: float | None) -> None:
        # Read by the reader at its next frame; which backend reads is chosen at each open.
        self._sampler.interval_s = _interval(value)

    def will_take(self, at: float) -> None:
        """The consumer calls `latest()` next at monotonic time `at`: have a frame then."""
        self._sampler.take_at = at

    @property
    def decoding(self) -> str:
        """What the reader does now: "all" (every frame decoded and converted), "grab"
        (every frame decoded, the sampled ones converted) or "keyframes" (only keyframes
        decoded, the sampled ones)."""
        return self._decoding.value

    @property
    def frames_grabbed(self) -> int:
        """Frames read since the start (across reconnects)."""
        return self._grabbed

    @property
    def frames_sampled(self) -> int:
        """Frames converted to images (handed to `latest`/`peek`) since the start."""
        return self._sampled

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
            try:
                error = self._read_from(cap)
            finally:
                cap.release()
            if error and not self._stop.is_set():
                if not self.retry:
                    raise _Ended(error)
                self._fail(error)

    def _open_pyav(self, url: str, *, network: bool) -> Capture:
        """`url` opened with PyAV (keyframes only where they suffice); OSError or
        ValueError when it cannot be."""
        # Imported here: only the worker's reader threads load PyAV, never the web process.
        from detection.engine import avcapture

        return avcapture.open_capture(
            url,
            open_timeout_s=self.open_timeout_s,
            read_timeout_s=self.read_timeout_s,
            keyframes_wanted=self._keyframes_wanted,
            network=network,
        )

    def _read_from(self, cap: Capture) -> str:
        """Read `cap` until it fails (returns why) or the source stops (returns "")."""
        sampler = self._sampler
        period = 1.0 / (cap.fps or ASSUMED_FPS)  # between grabs, measured as they come
        last_grab: float | None = None
        due_since: float | None = None  # a sample was due and no frame could serve it
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if not self._grab(cap):
                    return self._read_error(time.monotonic() - started)
            except (cv2.error, DecodeError) as exc:
                return _decode_error(exc)
            position, self._grabbed = self._grabbed, self._grabbed + 1
            now = time.monotonic()
            if last_grab is not None:
                period = min(1.0, max(0.001, 0.9 * period + 0.1 * (now - last_grab)))
            last_grab = now
            every = sampler.interval_s is None or self.decode is DecodeMode.ALL
            self._note_decoding(cap, every)
            sampler.cadence_s = cap.gop_s if cap.keyframes_only and cap.gop_s else period
            if not every and not sampler.due(now):
                continue  # grabbed, not converted
            try:
                image = cap.retrieve()
            except (cv2.error, DecodeError) as exc:
                return _decode_error(exc)
            if image is None:
                if every:  # as OpenCV's read() failing: the stream dropped
                    return self._read_error(time.monotonic() - started)
                # Not this frame (not decoded, or a decoder filling up): the next one; but
                # a stream where nothing decodes for long is dropped.
                due_since = now if due_since is None else due_since
                if now - due_since > self._undecodable_after(cap):
                    return f"cannot decode the stream: no frame for {now - due_since:.0f} s"
                continue
            due_since = None
            done = time.monotonic()
            sampler.cost_s = 0.8 * sampler.cost_s + 0.2 * (done - now)
            sampler.sampled(now)
            self._sampled += 1
            self._publish(Frame(image, position, done - self._t0, datetime.now(UTC)))
        return ""

    def _undecodable_after(self, cap: Capture) -> float:
        """How long a due sample may wait for a frame before the stream counts as broken:
        with keyframes only, the next keyframe may be a long GOP away (unknown before two
        came: corrupt keyframes then fail by their decode errors instead)."""
        if not cap.keyframes_only:
            return UNDECODABLE_S
        return max(UNDECODABLE_S, 2.5 * cap.gop_s) if cap.gop_s else math.inf

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            self._slot = frame
            self._cond.notify_all()
        if self._status is not SourceStatus.ONLINE:
            if self._was_online:
                self._reconnects += 1
            self._was_online = True
            self._failures = 0
            self._set_status(SourceStatus.ONLINE)

    def _note_decoding(self, cap: Capture, every: bool) -> None:
        if cap.keyframes_only:
            decoding = DecodeMode.KEYFRAMES
        else:
            decoding = DecodeMode.ALL if every else DecodeMode.GRAB
        if decoding is not self._decoding:
            gop = f", GOP {cap.gop_s:.2f} s" if cap.gop_s else ""
            log.info("%s: decoding %s%s", self.name, _DECODING[decoding], gop)
            self._decoding = decoding


_DECODING = {
    DecodeMode.ALL: "every frame",
    DecodeMode.GRAB: "every frame, converting only the sampled ones",
    DecodeMode.KEYFRAMES: "keyframes only",
}


def _interval(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(f"a sampling interval is a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise SourceError(f"a sampling interval must be a positive number of seconds, not {value}")
    return float(value)


def _decode_error(exc: Exception) -> str:
    detail = exc.msg if isinstance(exc, cv2.error) else ""
    return f"cannot decode the stream: {detail or exc}"


class StreamSource(LiveSource):
    """An rtsp/rtsps/http/https stream read with OpenCV's FFmpeg backend, or with PyAV
    when it is sampled in `auto` or `keyframes` decode mode (PyAV can skip decoding).

    RTSP over UDP loses frames on busy networks; operators may set
    OPENCV_FFMPEG_CAPTURE_OPTIONS="rtsp_transport;tcp" before starting the worker (PyAV
    opens honour it too).
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

    def _open(self) -> Capture:
        self._check_address()
        started = time.monotonic()
        if self._skips_decoding:
            try:
                return self._open_pyav(self.url, network=True)
            except (OSError, ValueError) as exc:
                log.debug("%s: PyAV cannot open it: %s", self.name, redact(str(exc)))
        else:
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
                return CVCapture(cap)
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

    # No keyframes on a webcam: sampled frames are grabbed, and only the due ones converted
    # (for an MJPEG camera, decoded).
    _skips_decoding = False

    def _open(self) -> Capture:
        cap = cv2.VideoCapture(self.index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.describe()}: no such device, or it is busy")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # drivers that honour it keep no stale frames
        return CVCapture(cap)


class PacedFileSource(LiveSource):
    """A video file played at its own frame rate in real time: a simulated live camera.

    With `loop` it starts over at the end; without, the source ends (status offline). A
    file that cannot be opened or decoded is final (status failed). Sampled, it decodes
    less exactly as a stream does (the benchmark's cameras measure that path).
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
        super().__init__(**options)

    def describe(self) -> str:
        return f"file {self.path.name}"

    def _open(self) -> Capture:
        cap: Capture
        if self._skips_decoding:
            try:
                cap = self._open_pyav(str(self.path), network=False)
            except (OSError, ValueError):
                raise SourceError(f"{self.path}: cannot be opened as a video") from None
        else:
            opened = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
            if not opened.isOpened():
                opened.release()
                raise SourceError(f"{self.path}: cannot be opened as a video")
            cap = CVCapture(opened)
        self.fps = cap.fps or ASSUMED_FPS
        self._due = time.monotonic()
        return cap

    def _grab(self, cap: Capture) -> bool:
        grabbed = cap.grab()
        # Loop only a file that gave a frame: an undecodable one would spin.
        if not grabbed and self.loop and self.frames_sampled and cap.rewind():
            grabbed = cap.grab()
        if not grabbed:
            raise _Ended("" if self.frames_sampled else f"{self.path}: no frame could be decoded")
        # Frame k is due at start + k / fps: sleeping to a schedule does not drift.
        self._stop.wait(max(0.0, self._due - time.monotonic()))
        self._due = max(self._due + 1.0 / self.fps, time.monotonic() - 1.0)
        return not self._stop.is_set()


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
