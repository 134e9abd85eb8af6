"""A `Capture` over PyAV that can decode keyframes only (see detection.engine.capture).

OpenCV cannot skip decoding: its `grab()` decodes. PyAV reads packets (`demux`) and decodes
only those it is given, so a frame that is not needed costs its demuxing alone:

- keyframes only: non-key packets are dropped unread by the decoder, and a keyframe packet
  is decoded only when a sample is due (the codec runs with `skip_frame=NONKEY`). A decoder
  that holds frames back for B-frame reordering would return a keyframe only after the next
  one arrived, a GOP late: such a decoder is drained and flushed after each keyframe (each
  keyframe decodes alone, so nothing is lost).
- every frame decoded (the `grab` half of `auto`): each packet is decoded as it arrives and
  converted to BGR only when retrieved.

Which of the two is decided at each keyframe by `keyframes_wanted(gop_s)`, `gop_s` being the
longest gap between the last keyframes seen (None before two): a switch needs a keyframe,
since a frame after one that was never decoded cannot be decoded.

Timestamps come from the packets (pts, else dts); a packet without either (some live
streams) counts at its arrival time. Imported only by the worker's reader threads: the web
process never loads PyAV (tests/portal/test_layout.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np

from .capture import DecodeError

log = logging.getLogger(__name__)

GAPS_KEPT = 8  # the GOP is the longest of the last this many keyframe gaps
# Decode errors in a row (corrupt packets) before the stream counts as undecodable.
MAX_DECODE_ERRORS = 100
NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")


def ffmpeg_options_from_env() -> dict[str, str]:
    """FFmpeg options from OPENCV_FFMPEG_CAPTURE_OPTIONS ("key;value|key;value"): operators
    set `rtsp_transport;tcp` there for OpenCV, and PyAV streams honour it the same way."""
    raw = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "")
    options = {}
    for item in raw.split("|"):
        key, sep, value = item.partition(";")
        if sep and key.strip():
            options[key.strip()] = value.strip()
    return options


def open_options(url: str, timeout_s: float) -> dict[str, str]:
    """What FFmpeg is told when opening `url`: socket timeouts (microseconds) for network
    protocols, plus the operator's options. PyAV's own open and read timeouts (an interrupt
    callback) are the ones that count; these only stop a socket that hangs past them."""
    options: dict[str, str] = {}
    scheme = url.split(":", 1)[0].lower()
    micros = str(round(timeout_s * 1_000_000))
    if scheme in ("rtsp", "rtsps"):
        options["timeout"] = micros  # the RTSP demuxer's socket I/O timeout
    elif scheme in NETWORK_SCHEMES:
        options["rw_timeout"] = micros  # any protocol: one read or write
    options.update(ffmpeg_options_from_env())
    return options


def open_capture(
    url: str,
    *,
    open_timeout_s: float,
    read_timeout_s: float,
    keyframes_wanted: Callable[[float | None], bool],
    network: bool,
) -> AVCapture:
    """Open `url` (a stream URL when `network`, else a local path) with PyAV; OSError
    when it cannot (the reason inside), ValueError when it has no video stream."""
    options = open_options(url, max(open_timeout_s, read_timeout_s)) if network else {}
    try:
        container = av.open(url, options=options, timeout=(open_timeout_s, read_timeout_s))
    except av.FFmpegError as exc:
        raise OSError(str(exc)) from None
    try:
        if not container.streams.video:
            raise ValueError("no video stream")
        return AVCapture(container, keyframes_wanted)
    except BaseException:
        container.close()
        raise


class AVCapture:
    """One opened container's first video stream, read packet by packet."""

    def __init__(self, container: Any, keyframes_wanted: Callable[[float | None], bool]) -> None:
        self.container = container
        self.stream = container.streams.video[0]
        self.codec = self.stream.codec_context
        self.keyframes_wanted = keyframes_wanted
        rate = self.stream.average_rate or self.stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self.fps = fps if 0 < fps <= 1000 else None
        self.gop_s: float | None = None
        # `keyframes` mode skips from the first packet on; `auto` first measures the GOP.
        self.keyframes_only = keyframes_wanted(None)
        if self.keyframes_only:
            self.codec.skip_frame = "NONKEY"
        self._gaps: deque[float] = deque(maxlen=GAPS_KEPT)
        self._last_key: float | None = None
        self._packets: Iterator[Any] = container.demux(self.stream)
        self._key_packet: Any = None  # keyframes only: the grabbed keyframe, not decoded yet
        self._frame: Any = None  # every frame: the newest decoded frame, not converted yet
        self._errors = 0

    # -- Capture --------------------------------------------------------------------

    def grab(self) -> bool:
        packet = self._next_packet()
        if packet is None:
            return False
        # A keyframe not taken when it came is not decoded later: the next one is fresher.
        self._key_packet = None
        if packet.is_keyframe:
            self._keyframe(packet)
        if self.keyframes_only:
            if packet.is_keyframe:
                self._key_packet = packet  # decoded only if retrieved
                self._frame = None
        else:
            frames = self._decode(packet)
            if frames:  # else (a reordering decoder filling up) the newest stays the newest
                self._frame = frames[-1]
        return True

    def retrieve(self) -> np.ndarray | None:
        frame, self._frame = self._frame, None
        if self.keyframes_only:
            packet, self._key_packet = self._key_packet, None
            if packet is None:
                return None
            frames = self._decode(packet)
            if not frames:
                # A decoder holding frames for reordering: drain it (each keyframe decodes
                # alone), then reopen it for the next one.
                frames = self._decode(None)
                self.codec.flush_buffers()
            frame = frames[-1] if frames else None
        if frame is None:
            return None
        return frame.to_ndarray(format="bgr24")

    def rewind(self) -> bool:
        try:
            self.container.seek(0)
        except (av.FFmpegError, OSError):
            return False
        self.codec.flush_buffers()
        self._packets = self.container.demux(self.stream)
        self._last_key = None  # timestamps start over
        return True

    def release(self) -> None:
        try:
            self.container.close()
        except (av.FFmpegError, OSError):  # a dropped connection: nothing more to free
            pass

    # -- inside -------------------------------------------------------------------------

    def _next_packet(self) -> Any:
        """The next packet with data; None at the end, on a dropped connection or a timeout
        (the reader tells those apart by how long the call took, as with OpenCV)."""
        try:
            for packet in self._packets:
                if packet.size:
                    return packet
        except (av.FFmpegError, OSError) as exc:
            log.debug("demux stopped: %s", exc)
        return None

    def _decode(self, packet: Any) -> list[Any]:
        try:
            frames = self.codec.decode(packet)
        except av.EOFError:
            return []
        except (av.FFmpegError, ValueError) as exc:
            # A corrupt packet (lost over UDP) spoils a frame, not the stream; a stream where
            # nothing decodes fails (the reader reports it).
            self._errors += 1
            if self._errors >= MAX_DECODE_ERRORS:
                message = f"{self._errors} packets in a row did not decode: {exc}"
                raise DecodeError(message) from None
            return []
        self._errors = 0
        return frames

    def _keyframe(self, packet: Any) -> None:
        """Measure the GOP, and switch between keyframes only and every frame here."""
        stamp = packet.pts if packet.pts is not None else packet.dts
        now = float(stamp * packet.time_base) if stamp is not None and packet.time_base else None
        if now is None:
            now = time.monotonic()
        if self._last_key is not None and now > self._last_key:
            self._gaps.append(now - self._last_key)
            self.gop_s = max(self._gaps)
        self._last_key = now
        wanted = self.keyframes_wanted(self.gop_s)
        if wanted == self.keyframes_only:
            return
        # Frames held back belong to the old way of decoding: dropped.
        self.codec.flush_buffers()
        self.codec.skip_frame = "NONKEY" if wanted else "DEFAULT"
        self.keyframes_only = wanted
        log.debug(
            "decoding %s (GOP %s)",
            "keyframes only" if wanted else "every frame",
            f"{self.gop_s:.2f} s" if self.gop_s else "unknown",
        )
