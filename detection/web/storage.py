"""Where uploaded videos live: generated names inside MEDIA_ROOT/uploads, nothing user-typed.

The only part of the client's filename that survives is its extension, and only when it is
one of `VIDEO_EXTENSIONS` (lower-cased). A failed write removes whatever it wrote.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import UploadedFile
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404

from detection.engine.video import VIDEO_EXTENSIONS

UPLOAD_DIR = "uploads"


def video_extension(filename: str) -> str | None:
    """The allowed, lower-cased extension of a client filename, or None."""
    ext = Path(filename or "").suffix.lower()
    return ext if ext in VIDEO_EXTENSIONS else None


def _storage() -> FileSystemStorage:
    # Built per call, not at import: MEDIA_ROOT may change (tests, reconfiguration).
    return FileSystemStorage(location=Path(settings.MEDIA_ROOT).resolve())


def store_upload(uploaded: UploadedFile, ext: str) -> Path:
    """Save `uploaded` as uploads/<uuid4 hex><ext>; return its absolute path."""
    if ext not in VIDEO_EXTENSIONS:
        raise ValueError(f"refusing to store an upload with extension {ext!r}")
    storage = _storage()
    name = f"{UPLOAD_DIR}/{uuid.uuid4().hex}{ext}"
    try:
        # FileSystemStorage moves a temporary upload into place (or streams it in chunks)
        # and applies FILE_UPLOAD_PERMISSIONS.
        saved = storage.save(name, uploaded)
    except BaseException:
        # A write that failed half-way (disk full, client gone) must not leave a fragment.
        Path(storage.path(name)).unlink(missing_ok=True)
        raise
    return Path(storage.path(saved))


def discard(path: Path | None) -> None:
    """Delete a stored upload; a missing file is not an error."""
    if path is not None:
        path.unlink(missing_ok=True)


def private_jpeg(file: FieldFile, what: str, cache_control: str) -> FileResponse:
    """A stored JPEG that passed an access check (MEDIA_ROOT is never served as a folder);
    404 naming `what` when there is none or its file is gone."""
    if not file:
        raise Http404(f"This {what} has no image.")
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise Http404(f"The {what}'s file is missing.") from None
    response = FileResponse(handle, content_type="image/jpeg")
    response["Cache-Control"] = cache_control
    return response
