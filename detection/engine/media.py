"""Recognising media files by their content, not their name."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

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


def declared_shortfall(path: Path) -> str | None:
    """Why the container says it is longer than the file, or None when it does not.

    Each container we read declares its own length: MP4/MOV a size per top-level box, AVI
    the RIFF size, Matroska the Segment size (unless written live, "unknown"). A file cut
    short in transfer keeps those declarations, so comparing them with the file's size
    finds truncation exactly and without decoding: a truncated MP4 whose index comes first
    (fast-start) still opens and decodes its first frames, so decoding alone cannot tell.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(64)
        kind = container_kind(head)
        if kind == "MP4/QuickTime":
            return _iso_bmff_shortfall(f, size)
        if kind == "AVI":
            declared = 8 + int.from_bytes(head[4:8], "little")
            return _short(size, declared, "the RIFF header")
        if kind == "Matroska/WebM":
            return _matroska_shortfall(f, size)
    return None


def _short(size: int, declared_end: int, what: str) -> str | None:
    if declared_end <= size:
        return None
    return (
        f"the file is truncated: it ends at byte {size:,} but {what} runs to byte "
        f"{declared_end:,} ({100 * size / declared_end:.0f} % present)"
    )


def _iso_bmff_shortfall(f: BinaryIO, size: int) -> str | None:
    offset = 0
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(16)
        box_size = int.from_bytes(header[:4], "big")
        box_type = header[4:8].decode("latin-1")
        if box_size == 1:  # a 64-bit size follows the type
            if len(header) < 16:
                return _short(size, offset + 16, f"the {box_type!r} box")
            box_size = int.from_bytes(header[8:16], "big")
        elif box_size == 0:
            return None  # "to the end of the file": nothing declared to check
        if box_size < 8:
            return None  # not a box structure we can follow; FFmpeg decides
        reason = _short(size, offset + box_size, f"the {box_type!r} box")
        if reason:
            return reason
        offset += box_size
    return None


def _read_vint(f: BinaryIO) -> tuple[int, int, bool] | None:
    """An EBML variable-size integer: (value, length in bytes, all value bits set)."""
    first = f.read(1)
    if not first:
        return None
    byte = first[0]
    length = next((i + 1 for i in range(8) if byte & (0x80 >> i)), 0)
    if length == 0:
        return None
    rest = f.read(length - 1)
    if len(rest) < length - 1:
        return None
    value = byte & (0xFF >> length)
    for b in rest:
        value = (value << 8) | b
    return value, length, value == (1 << (7 * length)) - 1


def _matroska_shortfall(f: BinaryIO, size: int) -> str | None:
    f.seek(4)  # past the EBML header's ID
    header = _read_vint(f)
    if header is None:
        return None
    f.seek(4 + header[1] + header[0])  # past the EBML header
    segment_id = f.read(4)
    if segment_id != b"\x18\x53\x80\x67":
        return None
    segment = _read_vint(f)
    if segment is None or segment[2]:
        return None  # unknown size: a live recording, nothing declared to check
    return _short(size, f.tell() + segment[0], "the Matroska segment")
