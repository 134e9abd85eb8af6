"""`manage.py prune`: apply the retention settings once (see detection/retention.py).

Workers already prune every DETECTION_PRUNE_INTERVAL_MINUTES; this is for cron, for a
first prune after changing a setting, and for `--dry-run` to see what would go.
Exit status: 0 done, 1 another prune holds the lease (nothing done), 2 bad options.
"""

from __future__ import annotations

import signal
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from detection import retention


def _days(value: int) -> str:
    return "forever" if not value else f"{value} days"


class Command(BaseCommand):
    help = (
        "Roll raw scores older than the retention up into per-minute summaries and delete "
        "them; delete old summaries and old closed incidents (with their files)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="only count what would go; change nothing"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=retention.BATCH_ROWS,
            metavar="N",
            help=f"raw scores per transaction (default {retention.BATCH_ROWS})",
        )
        parser.add_argument(
            "--pause",
            type=float,
            default=retention.PAUSE_S,
            metavar="SECONDS",
            help=f"pause between batches, for the live path (default {retention.PAUSE_S})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1", returncode=2)
        if options["pause"] < 0:
            raise CommandError("--pause must not be negative", returncode=2)
        dry = options["dry_run"]
        self.stdout.write(
            f"Retention: raw scores {_days(settings.DETECTION_RETENTION_DAYS)} (or the "
            f"analysis's own), per-minute rollups "
            f"{_days(settings.DETECTION_ROLLUP_RETENTION_DAYS)}, closed incidents "
            f"{_days(settings.DETECTION_INCIDENT_RETENTION_DAYS)}."
        )
        stopping = []
        if not dry:
            # Ctrl-C / SIGTERM: finish the batch in flight (a committed batch is whole), stop.
            def stop(_signum: int, _frame: object) -> None:
                stopping.append(True)

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, stop)
        try:
            report = retention.prune(
                dry_run=dry,
                batch_rows=options["batch_size"],
                pause_s=options["pause"],
                should_stop=lambda: bool(stopping),
            )
        except retention.PruneBusy as exc:
            raise CommandError(f"Nothing done: {exc}.", returncode=1) from None
        verb = "would be" if dry else "were"
        self.stdout.write(
            f"Raw scores: {report.scores:,} of {report.analyses} analyses {verb} rolled up "
            f"into {report.rollups_written:,} per-minute rows and deleted."
        )
        for pk, count in sorted(report.per_analysis.items()):
            self.stdout.write(f"  analysis {pk}: {count:,}")
        self.stdout.write(f"Per-minute rollups: {report.rollups_deleted:,} {verb} deleted.")
        self.stdout.write(
            f"Closed incidents: {report.incidents:,} {verb} deleted, with their thumbnails, "
            "frames and clips."
        )
        if dry:
            self.stdout.write("Dry run: nothing was changed.")
        else:
            self.stdout.write(
                f"Done in {report.seconds:.1f} s, {report.batches} batches"
                + (" (stopped early; the next run carries on)." if report.stopped else ".")
            )
