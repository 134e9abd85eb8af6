"""What one live camera costs to decode, by decode mode (issue 16, item 1: decode less).

    python -m bench.decode [VIDEO ...] [--fps 1] [--seconds 20] [--repeats 1]
                           [--modes all,grab,keyframes] [--no-generated] [--json out.json]

Each video plays as a simulated 25-fps camera (`PacedFileSource`, looping, in real time:
the worker's own reader path) sampled at `--fps` by a consumer that asks as the worker does
(its Ticker, `will_take`, `latest(0)`). Measured over `--seconds` after a 2 s warm-up: the
process's CPU seconds per wall second (every thread: the reader, FFmpeg's decoder threads,
the idle consumer), i.e. the share of one core this camera takes; frames read and frames
converted per second; and the share of the consumer's asks that got a new frame (keyframes
only samples a stream whose GOP is longer than the interval less often than asked). `all`
is the behaviour before (every frame decoded and converted); `auto` is not measured, it is
one of the others: the table says which.

Besides the videos named (default: the sample videos in ../shared/data), two clips are made
once into --workdir (PyAV's libx264): 10 s at 25 fps with a keyframe every second, 1920x1080
at 4 Mbit/s (a camera's main stream) and 640x360 at 512 kbit/s (its sub-stream, what
`Camera.detect_source` points at), with sensor-like noise so the encoder spends a camera's
bit rate, not a flat test pattern's.

Django-free: only the engine. Results and the machine: docs/performance.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detection.engine.capture import DECODE_MODES, keyframes_suffice
from detection.engine.schedule import Ticker
from detection.engine.sources import PacedFileSource

SAMPLE_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SAMPLES = ("vtest.avi", "Megamind.avi", "box.mp4", "cup.mp4", "bikes.mp4", "bigbuckbunny.mp4")
# name: (size, bit rate): a camera's main stream and its sub-stream, at common bit rates.
GENERATED = {
    "main-1080p-gop1s.mp4": ((1920, 1080), 4_000_000),
    "sub-360p-gop1s.mp4": ((640, 360), 512_000),
}
WARMUP_S = 2.0


@dataclass
class Run:
    cpu_per_s: float  # CPU seconds per wall second
    read_per_s: float  # frames read (grabbed) per second
    converted_per_s: float  # frames converted to images per second
    served: float  # share of the consumer's asks that got a new frame
    decoding: str  # what the reader ended up doing
    load: tuple[float, float]  # 1-minute load average before, after


@dataclass
class Row:
    path: Path
    size: str
    gop_s: float | None
    mode: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def make_clip(
    path: Path, size: tuple[int, int], bit_rate: int, seconds: float = 10.0, fps: int = 25
) -> Path:
    """A camera-like H.264 clip: moving shapes over a gradient plus sensor noise, GOP = 1 s,
    at `bit_rate` (the noise makes the encoder spend it, as a real scene does)."""
    import av
    import cv2

    width, height = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [80 + 60 * np.sin(x / width * 4), 90 + 50 * np.cos(y / height * 3), 100 + 0 * x], -1
    )
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bit_rate
        stream.options = {
            "preset": "veryfast",
            "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0",
        }
        for n in range(round(seconds * fps)):
            image = base.copy()
            for i in range(5):
                cx = int((0.15 + 0.17 * i) * width + n * (i + 1) * width / 400) % width
                cv2.circle(
                    image, (cx, int((0.3 + 0.1 * i) * height)), height // 10, (40 * i, 200, 90), -1
                )
            image += rng.normal(0, 4, image.shape).astype(np.float32)
            frame = np.clip(image, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def probe(path: Path, keyframes: int = 9) -> tuple[str, float | None]:
    """Frame size and GOP as the reader measures it: the longest of the first gaps."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        size = f"{stream.codec_context.width}x{stream.codec_context.height}"
        stamps = []
        for packet in container.demux(stream):
            if packet.is_keyframe and packet.pts is not None:
                stamps.append(float(packet.pts * packet.time_base))
                if len(stamps) >= keyframes:
                    break
    gaps = [b - a for a, b in itertools.pairwise(stamps) if b > a]
    return size, max(gaps) if gaps else None


def measure(path: Path, mode: str, fps: float, seconds: float) -> Run:
    """One camera playing `path`, sampled at `fps` in `mode`, for `seconds` after warm-up."""
    interval = 1.0 / fps
    source = PacedFileSource(path, loop=True, sample_interval_s=interval, decode=mode).start()
    try:
        ticker = Ticker(interval, time.monotonic())
        asks = handed = 0
        started = time.monotonic()
        load_before = os.getloadavg()[0]
        window: tuple[float, float, int, int] | None = None
        while True:
            now = time.monotonic()
            if window is None and now - started >= WARMUP_S:
                window = (now, time.process_time(), source.frames_grabbed, source.frames_sampled)
                asks = handed = 0
            if window is not None and now - window[0] >= seconds:
                break
            if ticker.due(now):
                ticker.advance(now)
                source.will_take(ticker.next_due)
                asks += 1
                handed += source.latest(0) is not None
            time.sleep(max(0.0, min(0.05, ticker.next_due - time.monotonic())))
        assert window is not None
        wall = time.monotonic() - window[0]
        return Run(
            cpu_per_s=(time.process_time() - window[1]) / wall,
            read_per_s=(source.frames_grabbed - window[2]) / wall,
            converted_per_s=(source.frames_sampled - window[3]) / wall,
            served=handed / max(1, asks),
            decoding=source.decoding,
            load=(load_before, os.getloadavg()[0]),
        )
    finally:
        source.stop()


def videos(args: argparse.Namespace) -> list[Path]:
    chosen = [Path(v) for v in args.videos] or [
        SAMPLE_DIR / name for name in SAMPLES if (SAMPLE_DIR / name).is_file()
    ]
    if args.generated:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        for name, (size, bit_rate) in GENERATED.items():
            path = workdir / name
            if not path.is_file():
                print(f"making {path} ...", file=sys.stderr)
                make_clip(path, size, bit_rate)
            chosen.append(path)
    return chosen


def table(rows: Sequence[Row], fps: float) -> str:
    """Markdown: CPU per camera (% of one core: median, and range over repeats), frame rates,
    and what the reader ended up doing."""
    lines = [
        "| video | size | GOP | mode | CPU per camera, % of a core | read/s | converted/s "
        f"| asks served ({fps:g}/s) | decoding |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cpu = [100 * run.cpu_per_s for run in row.runs]
        spread = f" ({min(cpu):.1f}-{max(cpu):.1f})" if len(cpu) > 1 else ""
        gop = f"{row.gop_s:.2f} s" if row.gop_s else "one keyframe"
        lines.append(
            f"| {row.path.name} | {row.size} | {gop} | {row.mode} | "
            f"{statistics.median(cpu):.1f}{spread} | {row.median('read_per_s'):.1f} | "
            f"{row.median('converted_per_s'):.2f} | {100 * row.median('served'):.0f} % | "
            f"{row.runs[-1].decoding} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("videos", nargs="*", help="videos to play (default: ../shared/data)")
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate (frames/s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per video and mode")
    parser.add_argument("--modes", default="all,grab,keyframes", help="comma-separated")
    parser.add_argument("--no-generated", dest="generated", action="store_false")
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "clipwatch-bench-decode")
    )
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in DECODE_MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; expected {', '.join(DECODE_MODES)}")
    print(f"machine: {machine()}", file=sys.stderr)
    rows: list[Row] = []
    for path in videos(args):
        size, gop = probe(path)
        auto = "keyframes" if keyframes_suffice(gop, 1.0 / args.fps) else "grab"
        print(f"{path.name}: {size}, GOP {gop}, auto -> {auto}", file=sys.stderr)
        for mode in modes:
            rows.append(Row(path, size, gop, mode))
    # Repeats interleave (every row once, then again): a busy spell hits all rows alike.
    for _ in range(args.repeats):
        for row in rows:
            run = measure(row.path, row.mode, args.fps, args.seconds)
            row.runs.append(run)
            print(
                f"{row.path.name} {row.mode}: {100 * run.cpu_per_s:.1f} % of a core, "
                f"load {run.load[0]:.2f}-{run.load[1]:.2f}",
                file=sys.stderr,
            )
    print(table(rows, args.fps))
    loads = [x for row in rows for run in row.runs for x in run.load]
    print(f"\nmachine: {machine()}; load average (1 min) {min(loads):.2f}-{max(loads):.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": machine(), "rows": [asdict(r) for r in rows]}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
