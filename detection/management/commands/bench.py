"""`manage.py bench [VIDEO]`: the prototype's loop, analyze_video and the worker side by side.

See bench/benchmark.py. Runs against temporary SQLite databases and a temporary MEDIA_ROOT:
the configured database and media are not touched.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.test import override_settings

from bench import benchmark as bench
from detection import conf
from detection.engine import EngineError

from ._analyze import logs_to_stderr


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"{text!r}: expected numbers like 1,2,4,8,16", returncode=2) from None
    if any(c < 1 for c in counts):
        raise CommandError(f"{text!r}: each number must be at least 1", returncode=2)
    return counts


class Command(BaseCommand):
    help = (
        "Benchmark the prototype's loop, analyze_video and the worker side by side on one "
        "video, plus the ceiling and the live capacity; prints a table, JSON with --json."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "video", nargs="?", default=str(bench.DEFAULT_VIDEO), help="video file (vtest.avi)"
        )
        parser.add_argument("--fps", type=float, default=1.0, help="frames scored per second")
        parser.add_argument("--model", help="open_clip architecture (default: DETECTION_MODEL)")
        parser.add_argument("--pretrained", help="weights (default: DETECTION_PRETRAINED)")
        parser.add_argument("--device", help="auto, cpu, cuda (default: DETECTION_DEVICE)")
        parser.add_argument("--precision", help="auto, fp32, bf16, fp16 (default: settings)")
        parser.add_argument("--batch-size", type=int, help="default: DETECTION_BATCH_SIZE")
        parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (2)")
        parser.add_argument(
            "--cameras",
            default="1,2,4,8,16",
            help="simulated camera counts for the live capacity, or 0 to skip (1,2,4,8,16)",
        )
        parser.add_argument("--camera-clip", help="video played by each simulated camera")
        parser.add_argument(
            "--live-seconds", type=float, default=10.0, help="measuring window per camera count"
        )
        parser.add_argument(
            "--matmul-sizes",
            help="square matmul sizes for the ceiling (default 1024,2048,4096; GPU 4096,8192)",
        )
        parser.add_argument("--no-worker", action="store_true", help="skip the worker path")
        parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        logs_to_stderr()  # stdout is the report
        video = Path(options["video"]).resolve()
        if not video.is_file():
            raise CommandError(f"{video}: no such video file", returncode=2)
        if options["repeats"] < 1:
            raise CommandError("--repeats must be at least 1", returncode=2)
        # Through the settings, so analyze_video, the worker and the live workers all load
        # the same model (the prototype: the same architecture and weights, fp32).
        model_settings = {
            f"DETECTION_{key.upper()}": options[key]
            for key in ("model", "pretrained", "device", "precision")
            if options[key]
        }
        cameras = [] if options["cameras"].strip() == "0" else _counts(options["cameras"])
        sizes = _counts(options["matmul_sizes"]) if options["matmul_sizes"] else None

        if options["verbosity"] < 2:
            # The worker logs every claim and completion; the benchmark reports them itself.
            for name in ("detection.worker.loop", "detection.engine.loader", "root"):
                logging.getLogger(name).setLevel(logging.WARNING)

        def log(message: str) -> None:
            self.stderr.write(message)
            sys.stderr.flush()

        with tempfile.TemporaryDirectory(prefix="clipwatch-bench-") as tmp:
            folder = Path(tmp)
            media = folder / "media"
            media.mkdir()
            from django.conf import settings

            with (
                override_settings(
                    MEDIA_ROOT=media,
                    DETECTION_VIDEO_DIRS=[*settings.DETECTION_VIDEO_DIRS, video.parent],
                    **model_settings,
                ),
                bench.temporary_database(folder),
            ):
                try:
                    report = bench.run_benchmark(
                        video,
                        sampling_fps=options["fps"],
                        spec=conf.model_spec(),
                        repeats=options["repeats"],
                        batch_size=options["batch_size"],
                        worker=not options["no_worker"],
                        cameras=cameras,
                        camera_clip=options["camera_clip"],
                        live_measure_s=options["live_seconds"],
                        matmul_sizes=sizes,
                        log=log,
                    )
                except EngineError as exc:
                    raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(bench.format_report(report))
        if options["json"]:
            bench.write_json(report, options["json"])
            self.stderr.write(f"report written to {options['json']}")
