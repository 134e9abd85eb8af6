"""`manage.py run_detector`: the detection worker (see detection/worker/loop.py)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from detection.engine import EngineError
from detection.engine.device import resolve_device
from detection.worker.loop import Worker


class Command(BaseCommand):
    help = "Score every active analysis until stopped (SIGTERM/SIGINT), or once with --once."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="run every claimable file analysis to the end, then exit",
        )
        parser.add_argument("--analysis", type=int, metavar="ID", help="only this analysis")
        parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: settings)")
        parser.add_argument(
            "--batch-size",
            type=int,
            metavar="N",
            help="frames per forward pass (default: DETECTION_BATCH_SIZE)",
        )
        parser.add_argument(
            "--poll",
            type=float,
            default=2.0,
            metavar="SECONDS",
            help="how often to look for new work (default 2)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1", returncode=2)
        if settings.DATABASES["default"].get("OPTIONS", {}).get("pool"):
            # Its threads (the loop, pruning, clips, webhooks, e-mail) each hold a
            # connection for good: a pool sized for daphne's one thread would run dry.
            raise CommandError(
                "DATABASE_POOL_SIZE is for the web process (daphne) only: unset it for "
                "run_detector (set it in the web unit, not in the shared environment file)",
                returncode=2,
            )
        try:
            worker = Worker(
                once=options["once"],
                analysis_id=options["analysis"],
                device=options["device"],
                batch_size=options["batch_size"],
                poll_seconds=options["poll"],
            )
            # A box told to use a device it lacks (say, a GPU drop-in copied to a CPU box)
            # must not start: it would claim analyses and fail each one, everyone's.
            resolve_device(worker.spec.device)
        except EngineError as exc:
            raise CommandError(str(exc), returncode=2) from None
        worker.install_signal_handlers()
        worker.run()
