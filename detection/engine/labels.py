"""Ground truth for `manage.py evaluate`: which seconds of which video are anomalous.

Three formats, recognised by content (never by the file name):

- `csv`: a header naming the columns `video`, `start_s`, `end_s` (any case, any order,
  spaces and a byte-order mark tolerated) and optionally `kind` (what the anomaly is, for
  per-kind numbers); one row per anomalous interval, in seconds; a video without
  anomalies has one row with `start_s` and `end_s` empty.
- `ucf-crime`: UCF-Crime's temporal annotation file, whitespace-separated
  `name class start1 end1 start2 end2`, frame numbers, `-1 -1` for no interval; the class
  is the interval's kind (`Normal` videos have none).
- `xd-violence`: XD-Violence's list, `name start1 end1 [start2 end2 ...]` in frame
  numbers (the name may lack its `.mp4`). XD-Violence lists only violent videos: a line
  holding a name alone adds a normal one.

Frame numbers become seconds with the video's own frame rate, read from the file the way
`VideoReader` reads it (so the frame at index f is at f / fps for both). An interval is
half-open, `start_s <= t < end_s`: frames s..e (inclusive, as the datasets count them)
become [s / fps, (e + 1) / fps).

Video names are relative to the videos folder; a name not found there directly is looked
up by file name anywhere below it (UCF-Crime ships its videos in one folder per class).
Every error names the labels file, the line and the reason.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MediaError
from .video import VIDEO_EXTENSIONS, VideoReader

CSV = "csv"
UCF_CRIME = "ucf-crime"
XD_VIOLENCE = "xd-violence"
FORMATS = (CSV, UCF_CRIME, XD_VIOLENCE)
CSV_COLUMNS = ("video", "start_s", "end_s")
MAX_LABELS_BYTES = 64 * 1024 * 1024


class LabelsError(MediaError):
    """A labels file (or a video it names) cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Interval:
    """Anomalous from `start_s` (included) to `end_s` (excluded)."""

    start_s: float
    end_s: float
    kind: str = ""

    def contains(self, time_s: float) -> bool:
        return self.start_s <= time_s < self.end_s


@dataclass
class LabelledVideo:
    name: str  # as the labels file spells it
    path: Path
    line: int  # where the labels file first names it
    fps: float  # the rate frame numbers and timestamps use (VideoReader's)
    header_frames: int
    intervals: list[Interval] = field(default_factory=list)

    def interval_at(self, time_s: float) -> Interval | None:
        """The (first) anomalous interval holding `time_s`, or None: a normal frame."""
        return next((i for i in self.intervals if i.contains(time_s)), None)


@dataclass
class Labels:
    path: Path
    format: str
    videos: list[LabelledVideo]

    def as_dict(self) -> dict[str, list[tuple[float, float]]]:
        """`{video name: [(start_s, end_s), ...]}`."""
        return {v.name: [(i.start_s, i.end_s) for i in v.intervals] for v in self.videos}


# --- parsing (text only: units as the file gives them) -------------------------------------


@dataclass
class _Entry:
    name: str
    line: int
    spans: list[tuple[float, float, str, int]] = field(default_factory=list)  # + line


@dataclass
class _Parsed:
    format: str
    unit: str  # "s" or "frames"
    entries: list[_Entry]


def _where(path: Path | str, line: int | None) -> str:
    return f"{path}, line {line}" if line is not None else str(path)


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LabelsError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LabelsError(f"{where}: {what} {text!r} is not a finite number")
    return value


def _frame(text: str, what: str, where: str) -> int:
    value = _number(text, what, where)
    if not value.is_integer() or value < -1:
        raise LabelsError(f"{where}: {what} {text!r} is not a frame number")
    return int(value)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of the lines that hold something ('#' starts a comment
    line in the whitespace formats)."""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def _add(entries: dict[str, _Entry], name: str, number: int) -> _Entry:
    entry = entries.get(name)
    if entry is None:
        entry = entries[name] = _Entry(name, number)
    return entry


def _parse_csv(text: str, path: Path) -> _Parsed:
    rows = csv.reader(text.splitlines())
    header: list[str] | None = None
    entries: dict[str, _Entry] = {}
    for row in rows:
        number = rows.line_num  # the line a row ends on (a quoted field may span lines)
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        where = _where(path, number)
        if header is None:
            header = [c.lower() for c in cells]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise LabelsError(
                    f"{where}: the header must name the columns {','.join(CSV_COLUMNS)} "
                    f"(and optionally kind); missing {', '.join(missing)}"
                )
            continue
        values = dict(zip(header, cells, strict=False))
        name = values.get("video", "")
        if not name:
            raise LabelsError(f"{where}: the video name is empty")
        start, end = values.get("start_s", ""), values.get("end_s", "")
        entry = _add(entries, name, number)
        if not start and not end:
            continue  # a video without anomalies
        if not start or not end:
            raise LabelsError(f"{where}: give both start_s and end_s, or neither (no anomaly)")
        start_s = _number(start, "start_s", where)
        end_s = _number(end, "end_s", where)
        if start_s < 0:
            raise LabelsError(f"{where}: start_s {start} is negative")
        if end_s <= start_s:
            raise LabelsError(f"{where}: end_s {end} is not after start_s {start}")
        entry.spans.append((start_s, end_s, values.get("kind", ""), number))
    if header is None:
        raise LabelsError(f"{path}: the labels file holds no header and no rows")
    return _Parsed(CSV, "s", list(entries.values()))


def _frame_pairs(
    tokens: list[str], where: str, kind: str, number: int
) -> Iterator[tuple[float, float, str, int]]:
    if len(tokens) % 2:
        raise LabelsError(
            f"{where}: frame numbers come in start/end pairs, found {len(tokens)} numbers"
        )
    for k in range(0, len(tokens), 2):
        start = _frame(tokens[k], "start frame", where)
        end = _frame(tokens[k + 1], "end frame", where)
        if start == -1 and end == -1:
            continue  # UCF-Crime's "no (second) interval"
        if start < 0 or end < 0:
            raise LabelsError(f"{where}: -1 marks no interval only as a pair (-1 -1)")
        if end < start:
            raise LabelsError(f"{where}: end frame {end} is before start frame {start}")
        yield float(start), float(end), kind, number


def _parse_columns(text: str, path: Path, fmt: str) -> _Parsed:
    entries: dict[str, _Entry] = {}
    for number, line in _lines(text):
        where = _where(path, number)
        tokens = line.split()
        name = tokens[0]
        if name in entries:
            raise LabelsError(
                f"{where}: {name} is listed twice (first on line {entries[name].line})"
            )
        if fmt == UCF_CRIME:
            if len(tokens) < 4 or _is_number(tokens[1]):
                raise LabelsError(
                    f"{where}: expected 'name class start1 end1 start2 end2' (UCF-Crime), "
                    f"got {line!r}"
                )
            kind = "" if tokens[1].lower() == "normal" else tokens[1]
            spans = list(_frame_pairs(tokens[2:], where, kind, number))
        else:
            if len(tokens) > 1 and not _is_number(tokens[1]):
                raise LabelsError(
                    f"{where}: expected 'name start1 end1 ...' (XD-Violence), got {line!r}"
                )
            spans = list(_frame_pairs(tokens[1:], where, "", number))
        _add(entries, name, number).spans.extend(spans)
    return _Parsed(fmt, "frames", list(entries.values()))


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def detect_format(text: str) -> str | None:
    """The format of a labels file's text, from its first line that holds something."""
    first = next((line for _, line in _lines(text)), None)
    if first is None:
        return None
    if "," in first:
        return CSV
    tokens = first.split()
    if len(tokens) >= 4 and not _is_number(tokens[1]) and all(map(_is_number, tokens[2:])):
        return UCF_CRIME
    if all(_is_number(t) for t in tokens[1:]):
        return XD_VIOLENCE
    return None


def parse_labels(text: str, path: Path | str = "<labels>") -> _Parsed:
    """The file's entries in its own units (seconds, or frame numbers)."""
    path = Path(path)
    text = text.removeprefix("\ufeff")
    fmt = detect_format(text)
    if fmt is None:
        raise LabelsError(
            f"{path}: not a labels file: expected a CSV with the header video,start_s,end_s, "
            "UCF-Crime's temporal annotations or XD-Violence's list"
        )
    parsed = _parse_csv(text, path) if fmt == CSV else _parse_columns(text, path, fmt)
    if not parsed.entries:
        raise LabelsError(f"{path}: the labels file names no video")
    return parsed


def read_text(path: Path) -> str:
    if not path.is_file():
        raise LabelsError(f"{path}: labels file not found")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise LabelsError(f"{path}: over {MAX_LABELS_BYTES // 2**20} MiB: not a labels file")
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise LabelsError(f"{path}: a binary file, not a labels file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{path}: not UTF-8 text (byte {exc.start})") from None


# --- resolving the videos --------------------------------------------------------------------


class _Finder:
    """Finds a named video under a folder: directly, else by file name (or, for names
    without an extension, by stem) anywhere below it, built on first need."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._index: dict[str, list[Path]] | None = None

    def _walk(self) -> dict[str, list[Path]]:
        if self._index is None:
            self._index = {}
            for p in sorted(self.folder.rglob("*")):
                if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
                    self._index.setdefault(p.name, []).append(p)
                    self._index.setdefault(f"stem:{p.stem}", []).append(p)
        return self._index

    def find(self, name: str, where: str) -> Path:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise LabelsError(f"{where}: video {name!r} must be a name relative to --videos")
        direct = self.folder / relative
        if direct.is_file():
            return direct
        if not relative.suffix:
            for ext in VIDEO_EXTENSIONS:
                if direct.with_name(direct.name + ext).is_file():
                    return direct.with_name(direct.name + ext)
        key = relative.name if relative.suffix else f"stem:{relative.name}"
        found = self._walk().get(key, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            shown = ", ".join(str(p.relative_to(self.folder)) for p in found[:3])
            raise LabelsError(f"{where}: video {name!r} is ambiguous under {self.folder}: {shown}")
        raise LabelsError(f"{where}: video {name!r} is not in {self.folder}")


def load_labels(path: str | Path, videos_dir: str | Path) -> Labels:
    """Read a labels file and find (and open) each video it names under `videos_dir`."""
    path, folder = Path(path), Path(videos_dir)
    if not folder.is_dir():
        raise LabelsError(f"{folder}: videos folder not found")
    parsed = parse_labels(read_text(path), path)
    finder = _Finder(folder)
    videos = []
    for entry in parsed.entries:
        where = _where(path, entry.line)
        video_path = finder.find(entry.name, where)
        try:
            with VideoReader(video_path) as reader:
                fps, frames = reader.stats.fps, reader.stats.header_frames
        except MediaError as exc:
            raise LabelsError(f"{where}: {exc}") from None
        video = LabelledVideo(entry.name, video_path, entry.line, fps, frames)
        video.intervals = list(_seconds(entry.spans, parsed.unit, fps))
        videos.append(video)
    return Labels(path, parsed.format, videos)


def _seconds(
    spans: Iterable[tuple[float, float, str, int]], unit: str, fps: float
) -> Iterator[Interval]:
    for start, end, kind, _line in spans:
        if unit == "s":
            yield Interval(start, end, kind)
        else:  # frames start..end inclusive
            yield Interval(start / fps, (end + 1) / fps, kind)
