"""Labelled test clips for `manage.py evaluate`: a fixed camera with planted departures.

    python -m bench.splice OUT_DIR [--data ../shared/data] [--synthetic]

From `vtest.avi` (a fixed camera over a campus path, 768x576, 10 fps, 79.5 s) it writes:

- `vtest_planted.avi`: the first 30 s untouched (for learning), then 5 s stretches of the
  original footage alternating with 5 s departures, in this order: foreign footage
  (`bikes.mp4` stretched to the frame), a covered lens (a near-black frame of grey noise),
  a new object (a textured crate pasted into the bottom-right corner) and a moved camera
  (turned 8 degrees and zoomed 1.15x); the people keep walking under each departure;
- `vtest_dusk.avi`: the original dimmed gradually from 100 % at 30 s to 55 % at 50 s, then
  held: a benign change, all normal;
- `labels.csv`: `video,start_s,end_s,kind`, one row per departure, one empty row for dusk.

Written with OpenCV's MJPG in AVI (every OpenCV build writes it). `build_synthetic` makes
the same kind of clip from generated frames (no shared/data), small enough for tests.
Measured results: docs/quality.md.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
BASE = "vtest.avi"
FOREIGN = "bikes.mp4"
PLANTED = "vtest_planted.avi"
DUSK = "vtest_dusk.avi"
LABELS = "labels.csv"
KINDS = ("foreign footage", "covered lens", "new object", "moved camera")

Frame = np.ndarray
Foreign = Callable[[float], Frame]  # the foreign clip's frame at t seconds into a departure


@dataclass(frozen=True)
class Segment:
    """Frames [start, end) of the clip; `kind` is a departure, or "" for original footage."""

    start: int
    end: int
    kind: str = ""


@dataclass(frozen=True)
class Spliced:
    videos: list[Path]
    labels: Path


# --- the departures ------------------------------------------------------------------------


def covered_lens(frame: Frame, rng: np.random.Generator) -> Frame:
    """Something over the lens: near black (mean ~22, above the black-frame skip level of
    10, as a hand or a cloth lets some light through) with sensor noise."""
    noise = rng.normal(22, 4, frame.shape)
    return np.clip(noise, 0, 255).astype(np.uint8)


def new_object(frame: Frame) -> Frame:
    """A crate (a fifth of the width, a quarter of the height) in the bottom-right corner."""
    out = frame.copy()
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = w - w // 5 - w // 40, h - h // 4 - h // 40, w - w // 40, h - h // 40
    out[y0:y1, x0:x1] = (40, 90, 150)  # brown (BGR)
    step = max(4, (x1 - x0) // 6)
    for x in range(x0, x1, step):  # planks
        cv2.line(out, (x, y0), (x, y1 - 1), (20, 50, 90), max(1, step // 6))
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (15, 30, 60), max(2, step // 4))
    cv2.line(out, (x0, y0), (x1 - 1, y1 - 1), (20, 50, 90), max(1, step // 5))
    return out


def moved_camera(frame: Frame) -> Frame:
    """The camera knocked: turned 8 degrees and zoomed 1.15x about the centre."""
    h, w = frame.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 8, 1.15)
    return cv2.warpAffine(frame, turn, (w, h), borderMode=cv2.BORDER_REFLECT)


def depart(kind: str, frame: Frame, t: float, foreign: Foreign, rng: np.random.Generator) -> Frame:
    """`frame` as the departure `kind` shows it, `t` seconds into the departure."""
    if kind == "foreign footage":
        other = foreign(t)
        h, w = frame.shape[:2]
        return cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA)
    if kind == "covered lens":
        return covered_lens(frame, rng)
    if kind == "new object":
        return new_object(frame)
    if kind == "moved camera":
        return moved_camera(frame)
    raise ValueError(f"unknown departure {kind!r}; known: {', '.join(KINDS)}")


# --- plans, clips and labels -----------------------------------------------------------------


def plan(
    frames: int,
    fps: float,
    learn_s: float = 30.0,
    segment_s: float = 5.0,
    kinds: Sequence[str] = KINDS,
) -> list[Segment]:
    """Original footage for `learn_s`, then `segment_s` of original footage and
    `segment_s` of each departure in turn, then original footage to the end."""
    learn, step = round(learn_s * fps), round(segment_s * fps)
    if learn + 2 * step * len(kinds) > frames:
        raise ValueError(f"{frames} frames cannot hold the learning time and every departure")
    segments, at = [Segment(0, learn)], learn
    for kind in kinds:
        segments += [Segment(at, at + step), Segment(at + step, at + 2 * step, kind)]
        at += 2 * step
    segments.append(Segment(at, frames))
    return segments


def write_clip(
    path: Path,
    frames: Iterable[Frame],
    fps: float,
    segments: Sequence[Segment] = (),
    foreign: Foreign | None = None,
    gain: Callable[[float], float] | None = None,
    seed: int = 0,
) -> int:
    """Write `frames` (BGR, one size) to `path` (MJPG AVI), departures applied where
    `segments` say, each frame multiplied by `gain(t)` if given; returns the frame count."""
    rng = np.random.default_rng(seed)
    writer = None
    count = 0
    try:
        for index, frame in enumerate(frames):
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write MJPG AVI to {path}")
            segment = next((s for s in segments if s.start <= index < s.end), None)
            if segment is not None and segment.kind:
                into = (index - segment.start) / fps
                frame = depart(segment.kind, frame, into, foreign or _no_foreign, rng)
            if gain is not None:
                frame = np.clip(frame.astype(np.float32) * gain(index / fps), 0, 255)
                frame = frame.astype(np.uint8)
            writer.write(np.ascontiguousarray(frame))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def _no_foreign(t: float) -> Frame:
    raise ValueError("a foreign-footage departure needs a foreign clip")


def write_labels(path: Path, videos: dict[str, tuple[float, Sequence[Segment]]]) -> Path:
    """`video,start_s,end_s,kind`: a row per departure; a video without any gets one empty
    row. `videos` maps a name to (fps, segments)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["video", "start_s", "end_s", "kind"])
        for name, (fps, segments) in videos.items():
            planted = [s for s in segments if s.kind]
            for s in planted:
                out.writerow([name, f"{s.start / fps:g}", f"{s.end / fps:g}", s.kind])
            if not planted:
                out.writerow([name, "", "", ""])
    return path


def dusk(start_s: float, end_s: float, low: float = 0.55) -> Callable[[float], float]:
    """A gain falling linearly from 1 at `start_s` to `low` at `end_s`, then held."""

    def gain(t: float) -> float:
        share = min(1.0, max(0.0, (t - start_s) / (end_s - start_s)))
        return 1.0 - (1.0 - low) * share

    return gain


# --- from the real sample videos -------------------------------------------------------------


def read_frames(path: Path) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise OSError(f"{path}: OpenCV cannot open it")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def clip_player(path: Path) -> Foreign:
    """The frame of `path` shown t seconds in (looping), from frames read once."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 25.0)
    cap.release()
    frames = list(read_frames(path))
    if not frames:
        raise OSError(f"{path}: no frame decodes")
    return lambda t: frames[int(t * fps) % len(frames)]


def build(out_dir: Path, data_dir: Path = DATA) -> Spliced:
    """The planted and dusk clips from vtest.avi (and bikes.mp4), with their labels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = data_dir / BASE
    cap = cv2.VideoCapture(str(base), cv2.CAP_FFMPEG)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    cap.release()
    if fps <= 0:
        raise OSError(f"{base}: cannot be read (is shared/data there?)")
    total = sum(1 for _ in read_frames(base))
    segments = plan(total, fps)
    planted, dim = out_dir / PLANTED, out_dir / DUSK
    write_clip(planted, read_frames(base), fps, segments, clip_player(data_dir / FOREIGN))
    write_clip(dim, read_frames(base), fps, gain=dusk(30.0, 50.0))
    labels = write_labels(out_dir / LABELS, {PLANTED: (fps, segments), DUSK: (fps, [])})
    return Spliced([planted, dim], labels)


# --- generated, for tests ----------------------------------------------------------------------


def synthetic_scene(
    t: float, size: tuple[int, int] = (160, 120), seed: int = 0, people: int = 3
) -> Frame:
    """A fixed-camera scene: a textured backdrop (fixed by `seed`) with `people` blobs
    walking across it and fresh sensor noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack(
        [
            110 + 70 * np.sin(x / w * 3 + seed),
            100 + 60 * np.cos(y / h * 4 + seed),
            90 + 50 * np.sin((x + y) / (w + h) * 5 + seed),
        ],
        axis=-1,
    )
    for _ in range(5):  # fixed furniture
        x0, y0 = int(rng.uniform(0, 0.8) * w), int(rng.uniform(0, 0.8) * h)
        x1, y1 = x0 + int(rng.uniform(0.1, 0.3) * w), y0 + int(rng.uniform(0.1, 0.3) * h)
        cv2.rectangle(image, (x0, y0), (x1, y1), rng.uniform(0, 255, 3).tolist(), -1)
    for k in range(people):
        cx = int((0.1 + 0.8 * ((0.15 * t * (k + 1) + k / people) % 1.0)) * w)
        cy = int((0.3 + 0.5 * k / max(1, people)) * h)
        cv2.ellipse(image, (cx, cy), (w // 40 + 2, h // 12 + 2), 0, 0, 360, (60, 60, 200), -1)
    image += np.random.default_rng(int(t * 1000) + 7).normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def build_synthetic(
    out_dir: Path,
    seconds: float = 24.0,
    fps: float = 5.0,
    size: tuple[int, int] = (160, 120),
    learn_s: float = 8.0,
    segment_s: float = 2.0,
    kinds: Sequence[str] = KINDS,
    name: str = "planted.avi",
) -> Spliced:
    """A small planted clip of generated frames (no shared/data) and its labels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    total = round(seconds * fps)
    segments = plan(total, fps, learn_s, segment_s, kinds)
    frames = (synthetic_scene(i / fps, size) for i in range(total))
    path = out_dir / name
    write_clip(path, frames, fps, segments, lambda t: synthetic_scene(t, size, seed=5))
    labels = write_labels(out_dir / LABELS, {name: (fps, segments)})
    return Spliced([path], labels)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--data", type=Path, default=DATA, help=f"sample videos ({DATA})")
    parser.add_argument("--synthetic", action="store_true", help="generated frames only")
    args = parser.parse_args(argv)
    made = build_synthetic(args.out_dir) if args.synthetic else build(args.out_dir, args.data)
    for video in made.videos:
        print(video)
    print(made.labels)
    learn = 8 if args.synthetic else 30
    print(
        f"python manage.py evaluate {made.labels} --videos {args.out_dir} "
        f"--mode normality --learn-seconds {learn} --fps 2 --threshold auto"
    )


if __name__ == "__main__":
    main()
