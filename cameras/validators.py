"""Validation of camera sources: what each kind of camera may point at.

File cameras may only read inside the directories the operator allowed
(`DETECTION_VIDEO_DIRS`, MEDIA_ROOT); streams follow the one URL and address rule of
`detection.engine.netpolicy` (rtsp/rtsps/http/https; LAN addresses and names yes; link-local
and cloud metadata never; loopback only where DETECTION_CAMERA_ALLOWED_NETWORKS opens it).
These rules are also re-applied by the worker when it opens a source, so a symlink swapped
or a DNS answer changed after validation does not widen access.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from detection.engine import netpolicy
from detection.engine.netpolicy import STREAM_SCHEMES as STREAM_SCHEMES  # one definition

MAX_WEBCAM_INDEX = 63
_WEBCAM_INDEX = re.compile(r"-?[0-9]+")  # ASCII only: "²".isdigit() is True, int("²") fails


def camera_policy() -> netpolicy.NetworkPolicy:
    """Where cameras may connect, with the networks the settings open (read per call)."""
    return netpolicy.camera_policy(settings.DETECTION_CAMERA_ALLOWED_NETWORKS)


def allowed_video_dirs() -> list[Path]:
    dirs = [*settings.DETECTION_VIDEO_DIRS, settings.MEDIA_ROOT]
    # Each once, in order: MEDIA_ROOT is both the default entry and always allowed.
    return list(dict.fromkeys(Path(os.path.realpath(d)) for d in dirs))


def webcam_index(source: str) -> int:
    text = source.strip()
    if not _WEBCAM_INDEX.fullmatch(text):
        raise ValidationError(
            "A webcam source is a device index such as 0 or 1, not %(value)r.",
            code="webcam_index",
            params={"value": source},
        )
    index = int(text)
    if index < 0:
        raise ValidationError("A webcam device index cannot be negative.", code="webcam_index")
    if index > MAX_WEBCAM_INDEX:
        raise ValidationError(
            "Webcam device index %(value)s is above %(max)s.",
            code="webcam_index",
            params={"value": index, "max": MAX_WEBCAM_INDEX},
        )
    return index


def stream_url(source: str) -> str:
    """The stripped URL, if cameras may stream from it (the worker's rule, plus DNS).

    A host name that does not resolve now is accepted (cameras are registered before they
    are online); the worker checks what it resolves to before every open.
    """
    try:
        target = netpolicy.parse_url(source, STREAM_SCHEMES, "stream URL")
        camera_policy().check(target, unresolvable_ok=True)
    except netpolicy.AddressError as error:
        raise ValidationError(str(error), code=f"stream_{error.code}") from None
    return target.url


def video_path(source: str, allowed: Iterable[Path] | None = None) -> Path:
    """The real path of a file camera's video, if it lies inside an allowed directory."""
    text = source.strip()
    if not text or "\x00" in text:
        raise ValidationError("Give the absolute path of a video file.", code="file_path")
    path = Path(text)
    if not path.is_absolute():
        raise ValidationError(
            "%(value)s is not an absolute path.", code="file_path", params={"value": text}
        )
    # realpath resolves '..' and every symlink, so the check is on where the bytes really are.
    real = Path(os.path.realpath(path))
    dirs = list(allowed) if allowed is not None else allowed_video_dirs()
    if not any(real == d or real.is_relative_to(d) for d in dirs):
        raise ValidationError(
            "%(value)s is outside the directories video files may be read from "
            "(DETECTION_VIDEO_DIRS: %(dirs)s).",
            code="file_outside",
            params={"value": text, "dirs": ", ".join(map(str, dirs))},
        )
    if not real.is_file():
        raise ValidationError(
            "%(value)s does not exist or is not a file.",
            code="file_missing",
            params={"value": text},
        )
    # Content, not name: a playlist or manifest renamed .mp4 would make FFmpeg open other
    # files or URLs, which a file camera must never do.
    from detection.engine.errors import MediaError
    from detection.engine.video import check_video_file

    try:
        check_video_file(real)
    except MediaError as error:
        raise ValidationError("%(reason)s", code="file_content", params={"reason": error}) from None
    return real
