"""`manage.py evaluate LABELS --videos DIR`: measure a configuration on labelled videos.

Frame-level ROC-AUC, average precision, best F1 and the flag rates at the threshold in use,
per video, per kind of anomaly and pooled (detection/engine/evaluation.py; the label
formats: detection/engine/labels.py; what was measured: docs/quality.md).
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

import cv2
from django.core.management.base import BaseCommand
from tqdm import tqdm

from detection.engine.detector import AUTO, MODES
from detection.engine.errors import EngineError, MediaError

from ._analyze import (
    DEFAULT_ANOMALY,
    DEFAULT_NORMAL,
    bad_input,
    logs_to_stderr,
    non_negative,
    positive,
    unit_interval,
)

DEFAULT_SET = "prompts"  # the name of the one set given with --normal/--anomaly


def whole(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise bad_input(f"{name} {value!r} is not a whole number") from None
    if number < 0:
        raise bad_input(f"{name} must be zero or more, got {value}")
    return number


class Command(BaseCommand):
    help = (
        "Measure a configuration on labelled videos: frame-level ROC-AUC, AP, best F1 and "
        "flag rates, per video and pooled; JSON with --json; exit 2 on bad input."
    )
    # As analyze_video: the model settings are checked when the model loads (exit 2).
    requires_system_checks: list[str] = []

    def execute(self, *args: Any, **options: Any) -> Any:
        logs_to_stderr()
        return super().execute(*args, **options)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "labels",
            help="labels file: CSV video,start_s,end_s[,kind], UCF-Crime temporal "
            "annotations or XD-Violence's list (recognised by content)",
        )
        parser.add_argument(
            "--videos", required=True, metavar="DIR", help="folder the labelled videos are in"
        )
        parser.add_argument(
            "--normal", action="append", metavar="TEXT", help="a normal prompt (repeatable)"
        )
        parser.add_argument(
            "--anomaly", action="append", metavar="TEXT", help="an anomaly prompt (repeatable)"
        )
        parser.add_argument(
            "--prompts-file",
            metavar="FILE",
            help='named prompt sets to compare in one run, JSON {"name": {"normal": [...], '
            '"anomaly": [...]}}; frames are embedded once for all of them',
        )
        parser.add_argument("--mode", default="prompts", choices=MODES)
        parser.add_argument(
            "--learn-seconds",
            default="0",
            metavar="N",
            help="learn the first N s of each video as normal (left out of the numbers)",
        )
        parser.add_argument("--fps", default="1.0", help="frames sampled per second (1)")
        parser.add_argument(
            "--threshold",
            default=AUTO,
            help="the threshold the flag rates use: a number in (0, 1) or 'auto' (default)",
        )
        parser.add_argument("--batch-size", default=None, help="images per model call")
        parser.add_argument(
            "--normality-views",
            choices=("regions", "crops"),
            default=None,
            help="normality features from one pass's patch tokens (regions) or five "
            "crops embedded apart (default: DETECTION_NORMALITY_VIEWS)",
        )
        parser.add_argument(
            "--skip-black-frames",
            action="store_true",
            help="skip black frames as the analyses do (off: a covered lens is an anomaly)",
        )
        parser.add_argument(
            "--logit-scale", default=None, metavar="S", help="fixed softmax scale (100)"
        )
        parser.add_argument(
            "--seed",
            default="0",
            metavar="N",
            help="seed torch before the model is built, so random weights "
            "(DETECTION_PRETRAINED=none) are the same on every run (0)",
        )
        parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--precision", default=None, help="auto, fp32, bf16 or fp16")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        import torch

        from detection import conf
        from detection.engine import evaluation, labels, load_model

        fps = positive(options["fps"], "--fps")
        learn = non_negative(options["learn_seconds"], "--learn-seconds")
        threshold = options["threshold"]
        threshold = AUTO if threshold == AUTO else unit_interval(threshold, "--threshold")
        batch = options["batch_size"]
        batch_size = int(positive(batch, "--batch-size")) if batch else conf.batch_size()
        scale = options["logit_scale"]
        seed = whole(options["seed"], "--seed")
        views = options["normality_views"]
        crops = conf.normality_crops() if views is None else (True if views == "crops" else None)
        bars: list[tqdm] = []
        try:
            sets = self.prompt_sets(options, evaluation)
            found = labels.load_labels(options["labels"], options["videos"])
            torch.manual_seed(seed)
            loaded = load_model(
                conf.model_spec(device=options["device"], precision=options["precision"])
            )
            total = sum(v.header_frames for v in found.videos) or None
            done: dict[str, int] = {}

            def progress(name: str, stats: Any) -> None:
                if not bars:
                    bars.append(
                        tqdm(desc="evaluating", unit="frame", total=total, file=self.stderr._out)
                    )
                done[name] = stats.frames_decoded
                bars[0].update(sum(done.values()) - bars[0].n)

            result = evaluation.evaluate(
                found,
                loaded,
                sets,
                mode=options["mode"],
                learn_seconds=learn,
                fps=fps,
                threshold=threshold,
                batch_size=batch_size,
                skip_black=options["skip_black_frames"],
                logit_scale=positive(scale, "--logit-scale") if scale else conf.logit_scale(),
                crops=crops,
                on_progress=progress,
            )
        except EngineError as exc:
            raise bad_input(str(exc)) from None
        except cv2.error as exc:
            reason = MediaError(f"OpenCV could not decode a video: {exc.msg}")
            raise bad_input(str(reason)) from None
        finally:
            for bar in bars:
                bar.close()
        report = result.report()
        if report["random_weights"]:
            self.stderr.write(
                "warning: random weights (DETECTION_PRETRAINED=none): prompt scores are "
                "meaningless; image-to-image normality still follows the pixels"
            )
        self.stdout.write(json.dumps(report, indent=2) if options["json"] else table(report))

    @staticmethod
    def prompt_sets(options: dict[str, Any], evaluation: Any) -> list[Any]:
        if options["prompts_file"]:
            if options["normal"] or options["anomaly"]:
                raise bad_input("give --prompts-file or --normal/--anomaly, not both")
            return evaluation.read_prompt_sets(options["prompts_file"])
        normal = options["normal"] if options["normal"] is not None else [DEFAULT_NORMAL]
        anomaly = options["anomaly"] if options["anomaly"] is not None else [DEFAULT_ANOMALY]
        for label, prompts in (("--normal", normal), ("--anomaly", anomaly)):
            if any(not p.strip() for p in prompts):
                raise bad_input(f"{label} prompt is empty: describe what the frame shows")
        return [evaluation.prompt_set(DEFAULT_SET, normal, anomaly)]


# --- the readable table ------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _row(name: str, block: dict[str, Any], width: int) -> str:
    return (
        f"{name:<{width}}  {block['frames']:>6}  {block['anomalous_frames']:>5}  "
        f"{_num(block['auc']):>6}  {_num(block['ap']):>6}  {_num(block['f1']):>6}  "
        f"{_num(block['best_threshold']):>7}  {_num(block.get('threshold')):>6}  "
        f"{_pct(block['anomalous_flagged']):>7}  {_pct(block['normal_flagged']):>7}"
    )


def table(report: dict[str, Any]) -> str:
    """Per prompt set: a row per video, per kind and the pooled one; then notes."""
    names = [v["video"] for v in report["videos"]] + list(report["kinds"]) + ["all videos"]
    width = max(12, *(len(n) for n in names))
    header = (
        f"{'video':<{width}}  {'frames':>6}  {'anom':>5}  {'AUC':>6}  {'AP':>6}  {'F1':>6}  "
        f"{'best_thr':>7}  {'thr':>6}  {'flag_an':>7}  {'flag_no':>7}"
    )
    lines = [
        f"{report['labels']['format']} labels, {report['labels']['videos']} videos; mode "
        f"{report['mode']}, learning {report['learn_seconds']:g} s, {report['fps']:g} frame/s, "
        f"threshold {report['threshold']}; model {report['model']} ({report['pretrained']}); "
        f"{report['frames_encoded']} frames encoded in {report['seconds']:.1f} s"
    ]
    notes: list[str] = []
    for name, data in report["sets"].items():
        lines += ["", f"prompt set {name!r}", header]
        for video in data["videos"]:
            lines.append(_row(video["video"], video, width))
            if video["note"]:
                notes.append(f"{video['video']}: {video['note']}")
        for kind, block in data["kinds"].items():
            lines.append(_row(kind, block, width))
        lines.append(_row("all videos", data["overall"], width))
    lines += [
        "",
        "anom: anomalous frames (learning frames excluded); best_thr: the threshold of best F1;",
        "thr: the threshold in use; flag_an / flag_no: anomalous / normal frames at or above it;",
        "a kind's row: that kind's frames against every normal frame.",
    ]
    lines += [f"note: {n}" for n in dict.fromkeys(notes)]
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
