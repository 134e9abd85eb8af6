"""`manage.py analyze_video PATH`: score a video file at a sampling rate."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from tqdm import tqdm

from detection.api import analyze_video

from ._analyze import AnalyzeCommand, non_negative, positive


class Command(AnalyzeCommand):
    help = (
        "Score a video file with CLIP at --fps frames per second; JSON with --json; "
        "progress on stderr; exit 2 on bad input."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--fps", default="1.0", help="frames to score per second of video")
        parser.add_argument("--batch-size", default=None, help="images per model call")
        parser.add_argument(
            "--learn-seconds",
            default="0",
            metavar="N",
            help="learn the first N seconds as this camera's normal (never anomalies)",
        )
        parser.add_argument(
            "--keep-black-frames",
            action="store_true",
            help="score black frames too (skipped by default, as the prototype)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        normal, anomaly = self.prompts(options)
        fps = positive(options["fps"], "--fps")
        batch = options["batch_size"]
        batch_size = int(positive(batch, "--batch-size")) if batch is not None else None
        common = self.common(options)
        bars: list[tqdm] = []  # created on the first report, after the model has loaded

        def progress(done: int, expected: int) -> None:
            if not bars:
                bars.append(
                    tqdm(
                        desc="decoding", unit="frame", total=expected or None, file=self.stderr._out
                    )
                )
            bars[0].update(done - bars[0].n)

        try:
            result = analyze_video(
                options["path"],
                normal,
                anomaly,
                fps,
                batch_size=batch_size,
                skip_black_frames=not options["keep_black_frames"],
                progress=progress,
                learn_seconds=non_negative(options["learn_seconds"], "--learn-seconds"),
                **common,
            )
        finally:
            for bar in bars:
                bar.close()
        self.finish(result, options["json"], self.summary(result))

    @staticmethod
    def summary(result: dict[str, Any]) -> str:
        if result["status"] != "Success":
            return ""
        meta = result["metadata"]
        lines = [f"{'time_s':>9}  {'frame':>7}  {'score':>6}  label"]
        lines += [
            f"{d['time_s']:9.2f}  {d['frame_index']:7d}  {d['score']:6.3f}  {d['label']}"
            for d in result["data"]
        ]
        lines.append(
            f"mode {meta['mode']}; threshold {meta['anomaly_threshold']:.3f} "
            f"({meta['threshold_mode']}); {meta['learned_frames']} frames learned"
        )
        if meta["frames_scored"]:
            lines.append(
                f"{meta['frames_scored']} frames scored of {meta['total_frames']} decoded "
                f"({meta['total_seconds']:.1f} s); peak {meta['max_anomaly_score']:.3f} at "
                f"{meta['max_anomaly_time']:.2f} s; mean {meta['average_score']:.3f}; "
                f"anomaly detected: {'yes' if meta['is_anomaly_detected'] else 'no'}"
            )
        else:
            lines.append(f"no frame scored ({meta['black_frames_skipped']} black frames skipped)")
        return "\n".join(lines)
