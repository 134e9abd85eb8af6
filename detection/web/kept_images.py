"""/image/ keeps the last uploaded image of each session, so it can be scored again with
new prompts without choosing the file again (browsers empty a file input on every page).

One image per session, under MEDIA_ROOT/image-tests/ with a generated name, replaced by
the next upload; files older than KEEP_SECONDS are removed whenever an image is kept. The
page refers to its image by a signed token in a hidden field; the image is used only when
the token is valid, recent, and names the image this session holds now. So another user
(another session) can never have it scored, a page left open in a tab where a newer image
was since uploaded says so rather than scoring the other image, and the file is never
served (the page shows a small JPEG made from it, as for a fresh upload).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core import signing

log = logging.getLogger(__name__)

FOLDER = "image-tests"
SESSION_KEY = "detection.kept_image"
SALT = "detection.web.kept_images"
KEEP_SECONDS = 3600
SUFFIX = ".img"  # the bytes as uploaded; decoded by content, never served


class KeptImageError(Exception):
    """The kept image cannot be used; the message says why and what to do, for the form."""


@dataclass(frozen=True)
class Kept:
    """A kept image: its token for the page and what the page says about it."""

    token: str
    filename: str
    width: int
    height: int


def folder() -> Path:
    return Path(settings.MEDIA_ROOT).resolve() / FOLDER


def keep(session: SessionBase, data: bytes, filename: str, width: int, height: int) -> Kept:
    """Store `data` as this session's image (replacing its previous one); its token."""
    _remove_expired()
    _discard(session)
    directory = folder()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}{SUFFIX}"
    path = directory / name
    try:
        path.write_bytes(data)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written file left behind
        raise
    session[SESSION_KEY] = {"name": name, "filename": filename, "size": [width, height]}
    return _kept(session)


def read(session: SessionBase, token: str) -> tuple[bytes, Kept]:
    """The bytes of the image `token` names, if it is this session's current image."""
    try:
        name = signing.loads(token, salt=SALT, max_age=KEEP_SECONDS)["name"]
    except signing.SignatureExpired:
        raise KeptImageError(_expired()) from None
    except (signing.BadSignature, KeyError, TypeError):
        raise KeptImageError(
            "The page's reference to your image is not valid: choose the image file again."
        ) from None
    held = session.get(SESSION_KEY) or {}
    if held.get("name") != name:
        raise KeptImageError(
            "This page's image was replaced by a newer upload (in another tab?) or belongs "
            "to another session: choose the image file again."
        )
    path = folder() / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        session.pop(SESSION_KEY, None)
        raise KeptImageError(_expired()) from None
    os.utime(path)  # scored again: kept for another KEEP_SECONDS
    return data, _kept(session)


def current(session: SessionBase) -> Kept | None:
    """This session's image, if it is still there."""
    held = session.get(SESSION_KEY) or {}
    if not held.get("name") or not (folder() / held["name"]).is_file():
        return None
    return _kept(session)


def _kept(session: SessionBase) -> Kept:
    held = session[SESSION_KEY]
    token = signing.dumps({"name": held["name"]}, salt=SALT)
    width, height = held["size"]
    return Kept(token=token, filename=held["filename"], width=width, height=height)


def _expired() -> str:
    minutes = KEEP_SECONDS // 60
    return (
        f"The image kept from your last upload is gone (images are kept {minutes} minutes "
        "after their last use): choose the image file again."
    )


def _discard(session: SessionBase) -> None:
    held = session.pop(SESSION_KEY, None) or {}
    name = held.get("name")
    if name and "/" not in name and name.endswith(SUFFIX):
        (folder() / name).unlink(missing_ok=True)


def _remove_expired() -> None:
    """Opportunistic cleanup: every kept image unused for KEEP_SECONDS, whoever's."""
    directory = folder()
    if not directory.is_dir():
        return
    cutoff = time.time() - KEEP_SECONDS
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass  # another request removed it first
        except OSError as exc:
            log.warning("could not remove the old test image %s: %s", path.name, exc)
