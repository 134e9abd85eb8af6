"""What `analyze_image` and `analyze_video` share: prompt options, validation, output."""

from __future__ import annotations

import json
import logging
import math
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from detection.engine.detector import AUTO, MODES

DEFAULT_NORMAL = "a photo of a normal, everyday scene"
DEFAULT_ANOMALY = "a photo of an accident, a fire, a fight or another dangerous event"
BAD_INPUT = 2  # exit status for anything the user can fix


def bad_input(message: str) -> CommandError:
    # One line, no traceback: Django prints "CommandError: <message>" and exits with it.
    return CommandError(" ".join(str(message).split()), returncode=BAD_INPUT)


def logs_to_stderr() -> None:
    """Point console log handlers at stderr: this command's stdout is its result.

    The portal logs to stdout (settings.LOGGING) as process managers expect; a command whose
    stdout is JSON or a report must keep it clean for pipes like `| jq`.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and stream in (
                sys.stdout,
                sys.__stdout__,
            ):
                handler.setStream(sys.stderr)


def unit_interval(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise bad_input(f"{name} {value!r} is not a number") from None
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise bad_input(f"{name} must lie strictly between 0 and 1, got {value}")
    return number


def positive(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise bad_input(f"{name} {value!r} is not a number") from None
    if not (math.isfinite(number) and number > 0):
        raise bad_input(f"{name} must be a positive number, got {value}")
    return number


def non_negative(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise bad_input(f"{name} {value!r} is not a number") from None
    if not (math.isfinite(number) and number >= 0):
        raise bad_input(f"{name} must be zero or a positive number, got {value}")
    return number


class AnalyzeCommand(BaseCommand):
    """Base for the two analysis commands; subclasses add their own arguments."""

    # The model settings are checked when the model loads, with a one-line reason and exit
    # status 2; the portal's system checks (multi-line, exit 1) are for `check`/`runserver`.
    requires_system_checks: list[str] = []

    def execute(self, *args: Any, **options: Any) -> Any:
        logs_to_stderr()
        return super().execute(*args, **options)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("path", help="file to analyse (its format is read from its content)")
        parser.add_argument(
            "--normal",
            action="append",
            metavar="TEXT",
            help=f"what a normal frame shows; repeat for a prompt ensemble "
            f"(default: {DEFAULT_NORMAL!r})",
        )
        parser.add_argument(
            "--anomaly",
            action="append",
            metavar="TEXT",
            help=f"what an anomaly looks like; repeat for an ensemble "
            f"(default: {DEFAULT_ANOMALY!r})",
        )
        # Numbers are taken as text and checked in handle(), so a bad value gets the same
        # one-line error and exit status as every other bad input.
        parser.add_argument(
            "--threshold",
            default="0.6",
            help="anomaly when the score is at or above this (default 0.6), or 'auto': "
            "derived from what was learned (see --mode)",
        )
        parser.add_argument(
            "--mode",
            default="prompts",
            choices=MODES,
            help="prompts (the prototype's score, default), normality (distance to the "
            "learned normal) or combined (the larger of both)",
        )
        parser.add_argument(
            "--normal-example",
            action="append",
            default=[],
            metavar="PATH",
            help="an image or clip of what is normal here (repeatable; normality modes)",
        )
        parser.add_argument(
            "--anomaly-example",
            action="append",
            default=[],
            metavar="PATH",
            help="an image or clip of a known anomaly (repeatable; normality modes)",
        )
        parser.add_argument(
            "--logit-scale",
            default=None,
            metavar="S",
            help="fixed softmax scale (100 = the prototype); default: the "
            "model's own, or DETECTION_LOGIT_SCALE",
        )
        parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--precision", default=None, help="auto, fp32, bf16 or fp16")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def prompts(self, options: dict[str, Any]) -> tuple[list[str], list[str]]:
        normal = options["normal"] if options["normal"] is not None else [DEFAULT_NORMAL]
        anomaly = options["anomaly"] if options["anomaly"] is not None else [DEFAULT_ANOMALY]
        for label, prompts in (("--normal", normal), ("--anomaly", anomaly)):
            if any(not p.strip() for p in prompts):
                raise bad_input(f"{label} prompt is empty: describe what the frame shows")
        return normal, anomaly

    def common(self, options: dict[str, Any]) -> dict[str, Any]:
        from detection import conf

        scale = options["logit_scale"]
        threshold = options["threshold"]
        return {
            "threshold": AUTO if threshold == AUTO else unit_interval(threshold, "--threshold"),
            "mode": options["mode"],
            "normal_examples": options["normal_example"],
            "anomaly_examples": options["anomaly_example"],
            "logit_scale": positive(scale, "--logit-scale") if scale is not None else None,
            "spec": conf.model_spec(device=options["device"], precision=options["precision"]),
        }

    def finish(self, result: dict[str, Any], as_json: bool, summary: str) -> None:
        if result["status"] != "Success":
            raise bad_input(result["error_message"])
        # Warnings (a prompt that describes sound, a truncated file, ...) go to stderr as
        # well as into the result: stdout may be JSON read by a program.
        for warning in result.get("warnings") or result.get("metadata", {}).get("warnings", []):
            self.stderr.write(f"warning: {warning}")
        if result.get("random_weights") or result.get("metadata", {}).get("random_weights"):
            self.stderr.write(
                "warning: random weights (DETECTION_PRETRAINED=none): scores are meaningless"
            )
        self.stdout.write(json.dumps(result, indent=2) if as_json else summary)
