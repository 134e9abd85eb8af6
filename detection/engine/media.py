"""Recognising media files by their content, not their name."""

from __future__ import annotations

from pathlib import Path

from .errors import MediaError

# Leading bytes of still-image formats someone might rename to .mp4.
IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


# Top-level boxes an ISO base media file (MP4, M4V, MOV) may start with; old QuickTime files
# begin with `mdat`, `wide`, `free`, `skip` or `pnot` rather than `ftyp`.
ISO_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


def container_kind(head: bytes) -> str | None:
    """The video container the bytes start with, among those we read; None otherwise.

    An allowlist on purpose: FFmpeg picks its demuxer from the content, and some of its
    formats (HLS, DASH, SDP, concat lists, image sequences) open other files or network
    URLs. Only these three containers, which carry their media inside, reach it.
    """
    if len(head) >= 8 and head[4:8] in ISO_BMFF_BOXES:
        return "MP4/QuickTime"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    return None


def sniff(path: Path, n: int = 64) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


def image_kind(head: bytes) -> str | None:
    """The still-image format the bytes start with, if any."""
    for signature, kind in IMAGE_SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def require_nonempty_file(path: str | Path, what: str) -> Path:
    """Return `path` as a Path if it names a readable, non-empty file, else MediaError."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: {what} file not found")
    if not p.is_file():
        raise MediaError(f"{p}: not a file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise MediaError(f"{p}: cannot be read ({exc.strerror})") from None
    if size == 0:
        raise MediaError(f"{p}: the file is empty (0 bytes)")
    return p
