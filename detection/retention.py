"""Retention: old raw scores become per-minute rollups, old rollups and incidents go.

Three ages, each in days, 0 meaning "keep forever" (portal/settings.py):
- raw FrameScore rows: DETECTION_RETENTION_DAYS, or an analysis's own `retention_days`;
- ScoreRollup rows (min, sum/mean, max, count, frames above the threshold per minute):
  DETECTION_ROLLUP_RETENTION_DAYS;
- closed incidents, with their thumbnail, kept frames and clip (detection/signals.py removes
  the files once the delete commits): DETECTION_INCIDENT_RETENTION_DAYS. Open ones stay.

A live score's age is its `captured_at`; a video file's scores (no wall time) age with
their analysis, from when it finished.

The live path must never stall behind a prune, so everything goes in small batches: at
most `batch_rows` raw scores (a range of frame indexes of one analysis, the unique index's
order), each batch one short transaction that aggregates the rows, merges them into the
minute's rollup and deletes them, then a short pause that lets the worker's next store in.
Because the rollup and the delete share the transaction, a prune killed at any point loses
nothing and counts nothing twice: the next run simply carries on.

One prune at a time in the whole deployment: a MaintenanceLease row taken by a
conditional UPDATE (exactly one process wins, on SQLite and PostgreSQL alike), renewed
between batches and lapsing if its holder dies.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, Count, F, Max, Min, Q, Sum
from django.db.models.functions import Cast, Floor
from django.utils import timezone

from detection.models import Analysis, FrameScore, Incident, MaintenanceLease, ScoreRollup

log = logging.getLogger(__name__)

LEASE_NAME = "prune"
LEASE_SECONDS = 120
BATCH_ROWS = 5000
INCIDENT_BATCH = 100
# Between two batches: long enough for a waiting writer (SQLite has one write lock) to go.
PAUSE_S = 0.02
SECONDS_PER_MINUTE = 60.0
USAGE_CACHE_KEY = "detection:storage-usage"
USAGE_CACHE_SECONDS = 60

Status = Analysis.Status


class PruneBusy(Exception):
    """Another process holds the prune lease (or pruned less than `min_interval` ago)."""


@dataclass
class PruneReport:
    dry_run: bool = False
    scores: int = 0  # raw scores rolled up and deleted (dry run: that would be)
    analyses: int = 0  # analyses that had some
    rollups_written: int = 0  # rollup rows created or merged into
    rollups_deleted: int = 0
    incidents: int = 0
    batches: int = 0
    seconds: float = 0.0
    stopped: bool = False  # asked to stop, or the lease was lost: the next run carries on
    per_analysis: dict[int, int] = field(default_factory=dict)
    # MEDIA_ROOT counted after the prune: the dashboard shows these rather than walking a
    # tree of maybe 100,000 files from a web request.
    media_files: int | None = None
    media_bytes: int | None = None

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["per_analysis"] = {str(k): v for k, v in self.per_analysis.items()}
        return data


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _days(value: int | None) -> timedelta | None:
    return timedelta(days=value) if value else None


# --- the lease ---------------------------------------------------------------------------


def acquire(owner: str, *, min_interval: timedelta | None = None, now=None) -> bool:
    """Take the prune lease if free (and, given `min_interval`, if nobody pruned lately)."""
    now = now or timezone.now()
    try:
        MaintenanceLease.objects.get_or_create(name=LEASE_NAME)
    except IntegrityError:  # created by a competitor between our SELECT and INSERT
        pass
    free = Q(expires_at__isnull=True) | Q(expires_at__lt=now) | Q(owner=owner)
    if min_interval is not None:
        free &= Q(last_finished_at__isnull=True) | Q(last_finished_at__lte=now - min_interval)
    return bool(
        MaintenanceLease.objects.filter(free, name=LEASE_NAME).update(
            owner=owner,
            expires_at=now + timedelta(seconds=LEASE_SECONDS),
            last_started_at=now,
        )
    )


def renew(owner: str) -> bool:
    now = timezone.now()
    return bool(
        MaintenanceLease.objects.filter(name=LEASE_NAME, owner=owner).update(
            expires_at=now + timedelta(seconds=LEASE_SECONDS)
        )
    )


def release(owner: str, report: PruneReport | None) -> None:
    fields: dict[str, object] = {"owner": "", "expires_at": None}
    if report is not None:
        fields.update(last_finished_at=timezone.now(), last_result=report.as_dict())
    MaintenanceLease.objects.filter(name=LEASE_NAME, owner=owner).update(**fields)


def holder() -> MaintenanceLease | None:
    """The lease row while someone holds it, else None."""
    return MaintenanceLease.objects.filter(name=LEASE_NAME, expires_at__gte=timezone.now()).first()


# --- what is old -------------------------------------------------------------------------


def _finished(analysis: Analysis) -> datetime | None:
    """When a video file's scores start ageing: once its analysis stopped running."""
    if analysis.status in (Status.RUNNING, Status.QUEUED):
        return None
    return analysis.finished_at or analysis.started_at or analysis.created_at


def old_scores(analysis: Analysis, cutoff: datetime) -> Q:
    old = Q(captured_at__lt=cutoff)
    finished = _finished(analysis)
    if finished is not None and finished < cutoff:
        old |= Q(captured_at__isnull=True)
    return old


def score_cutoff(analysis: Analysis, now: datetime) -> datetime | None:
    days = analysis.retention_days
    if days is None:
        days = settings.DETECTION_RETENTION_DAYS
    age = _days(days)
    return now - age if age else None


# --- rolling up --------------------------------------------------------------------------


def _minute_groups(rows):
    minute = Cast(Floor(F("time_s") / SECONDS_PER_MINUTE), BigIntegerField())
    return rows.annotate(minute=minute).values("minute").order_by("minute")


def _roll_up_batch(analysis: Analysis, old: Q, low: int | None, high: int) -> int:
    """Fold the old scores with low < frame_index <= high into their minutes and delete
    them, in one transaction. Returns the rollup rows written."""
    threshold = analysis.threshold_in_use
    finished = _finished(analysis)
    with transaction.atomic():
        rows = FrameScore.objects.filter(old, analysis=analysis, frame_index__lte=high)
        if low is not None:
            rows = rows.filter(frame_index__gt=low)
        groups = list(
            _minute_groups(rows).annotate(
                n=Count("id"),
                low=Min("score"),
                high=Max("score"),
                total=Sum("score"),
                above=Count("id", filter=Q(learning=False, score__gte=threshold)),
                learning=Count("id", filter=Q(learning=True)),
                first_index=Min("frame_index"),
                last_index=Max("frame_index"),
                start=Min("time_s"),
                end=Max("time_s"),
                first_at=Min("captured_at"),
                last_at=Max("captured_at"),
            )
        )
        if not groups:
            return 0
        existing = {
            r.minute: r
            for r in ScoreRollup.objects.filter(
                analysis=analysis, minute__in=[g["minute"] for g in groups]
            )
        }
        new, changed = [], []
        for g in groups:
            recorded = g["last_at"] or finished or timezone.now()
            rollup = existing.get(g["minute"])
            if rollup is None:
                new.append(
                    ScoreRollup(
                        analysis=analysis,
                        minute=g["minute"],
                        first_frame_index=g["first_index"],
                        last_frame_index=g["last_index"],
                        start_time_s=g["start"],
                        end_time_s=g["end"],
                        first_captured_at=g["first_at"],
                        last_captured_at=g["last_at"],
                        count=g["n"],
                        min_score=g["low"],
                        max_score=g["high"],
                        sum_score=g["total"],
                        above=g["above"],
                        learning=g["learning"],
                        threshold=threshold,
                        recorded_at=recorded,
                    )
                )
                continue
            # A minute pruned in two runs (the cutoff fell inside it): merge exactly.
            rollup.first_frame_index = min(rollup.first_frame_index, g["first_index"])
            rollup.last_frame_index = max(rollup.last_frame_index, g["last_index"])
            rollup.start_time_s = min(rollup.start_time_s, g["start"])
            rollup.end_time_s = max(rollup.end_time_s, g["end"])
            ats = [a for a in (rollup.first_captured_at, g["first_at"]) if a is not None]
            rollup.first_captured_at = min(ats) if ats else None
            ats = [a for a in (rollup.last_captured_at, g["last_at"]) if a is not None]
            rollup.last_captured_at = max(ats) if ats else None
            rollup.count += g["n"]
            rollup.min_score = min(rollup.min_score, g["low"])
            rollup.max_score = max(rollup.max_score, g["high"])
            rollup.sum_score += g["total"]
            rollup.above += g["above"]
            rollup.learning += g["learning"]
            rollup.threshold = threshold
            rollup.recorded_at = max(rollup.recorded_at, recorded)
            changed.append(rollup)
        ScoreRollup.objects.bulk_create(new)
        if changed:
            ScoreRollup.objects.bulk_update(
                changed,
                [
                    "first_frame_index",
                    "last_frame_index",
                    "start_time_s",
                    "end_time_s",
                    "first_captured_at",
                    "last_captured_at",
                    "count",
                    "min_score",
                    "max_score",
                    "sum_score",
                    "above",
                    "learning",
                    "threshold",
                    "recorded_at",
                ],
            )
        # The same rows that were aggregated, by the same condition, in the same transaction.
        rows.delete()  # one DELETE statement: nothing depends on a score
        return len(groups)


class _Run:
    """One prune: the lease (if any), the report, the pacing between batches."""

    def __init__(
        self,
        report: PruneReport,
        *,
        owner: str | None,
        pause_s: float,
        should_stop: Callable[[], bool],
    ) -> None:
        self.report = report
        self.owner = owner
        self.pause_s = pause_s
        self.should_stop = should_stop

    def carry_on(self) -> bool:
        """Between batches: pause, keep the lease, and stop when asked to."""
        self.report.batches += 1
        if self.pause_s:
            time.sleep(self.pause_s)
        if self.should_stop():
            self.report.stopped = True
        elif self.owner is not None and not renew(self.owner):
            log.warning("prune: lease lost (a run took over after ours lapsed); stopping")
            self.report.stopped = True
        return not self.report.stopped


def _roll_up(run: _Run, now: datetime, batch_rows: int) -> None:
    report = run.report
    # A list, not a cursor held open across the batches' transactions (a few hundred rows).
    for analysis in list(Analysis.objects.order_by("pk")):
        cutoff = score_cutoff(analysis, now)
        if cutoff is None:
            continue
        old = old_scores(analysis, cutoff)
        scores = FrameScore.objects.filter(old, analysis=analysis)
        if report.dry_run:
            count = scores.count()
            if count:
                report.per_analysis[analysis.pk] = count
                report.scores += count
                report.rollups_written += _minute_groups(scores).values("minute").distinct().count()
            continue
        low: int | None = None
        while True:
            batch = scores if low is None else scores.filter(frame_index__gt=low)
            indexes = list(
                batch.order_by("frame_index").values_list("frame_index", flat=True)[:batch_rows]
            )
            if not indexes:
                break
            high = indexes[-1]
            report.rollups_written += _roll_up_batch(analysis, old, low, high)
            report.scores += len(indexes)
            report.per_analysis[analysis.pk] = report.per_analysis.get(analysis.pk, 0) + len(
                indexes
            )
            low = high
            if not run.carry_on():
                return


def _delete_in_batches(run: _Run, queryset, size: int, on_batch: Callable[[list], None]) -> int:
    """Delete `queryset`'s rows `size` primary keys at a time; returns how many went."""
    deleted = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:size])
        if not ids:
            return deleted
        if run.report.dry_run:
            return queryset.count()
        with transaction.atomic():
            on_batch(ids)
        deleted += len(ids)
        if not run.carry_on():
            return deleted


def _prune_rollups(run: _Run, now: datetime, batch_rows: int) -> None:
    age = _days(settings.DETECTION_ROLLUP_RETENTION_DAYS)
    if age is None:
        return
    old = ScoreRollup.objects.filter(recorded_at__lt=now - age)
    run.report.rollups_deleted = _delete_in_batches(
        run,
        old,
        batch_rows,
        lambda ids: ScoreRollup.objects.filter(pk__in=ids).delete(),
    )


def _prune_incidents(run: _Run, now: datetime) -> None:
    age = _days(settings.DETECTION_INCIDENT_RETENTION_DAYS)
    if age is None:
        return
    # Closed incidents only: an open one is still being written by a worker.
    old = Incident.objects.filter(ended_at__lt=now - age)
    # A model delete, not a raw one: detection/signals.py removes each incident's files
    # once the batch commits, and related rows follow their on_delete rules.
    run.report.incidents = _delete_in_batches(
        run, old, INCIDENT_BATCH, lambda ids: Incident.objects.filter(pk__in=ids).delete()
    )


def prune(
    *,
    dry_run: bool = False,
    owner: str | None = None,
    min_interval: timedelta | None = None,
    batch_rows: int = BATCH_ROWS,
    pause_s: float = PAUSE_S,
    should_stop: Callable[[], bool] = lambda: False,
    now: datetime | None = None,
) -> PruneReport:
    """Apply the retention settings once; see the module docstring.

    Raises PruneBusy when another process holds the lease (or, given `min_interval`, pruned
    less than that long ago). A dry run takes no lease and changes nothing."""
    now = now or timezone.now()
    report = PruneReport(dry_run=dry_run)
    started = time.monotonic()
    if dry_run:
        run = _Run(report, owner=None, pause_s=0.0, should_stop=should_stop)
        _roll_up(run, now, batch_rows)
        _prune_rollups(run, now, batch_rows)
        _prune_incidents(run, now)
        report.batches = 0
        report.analyses = len(report.per_analysis)
        report.seconds = time.monotonic() - started
        return report
    owner = owner or default_owner()
    if not acquire(owner, min_interval=min_interval):
        current = holder()
        raise PruneBusy(
            f"another prune is running ({current.owner}, lease until "
            f"{current.expires_at:%Y-%m-%d %H:%M:%S %Z})"
            if current is not None
            else "a prune finished less than the prune interval ago"
        )
    run = _Run(report, owner=owner, pause_s=pause_s, should_stop=should_stop)
    try:
        _roll_up(run, now, batch_rows)
        if not report.stopped:
            _prune_rollups(run, now, batch_rows)
        if not report.stopped:
            _prune_incidents(run, now)
        report.media_files, report.media_bytes = _tree_bytes(str(settings.MEDIA_ROOT))
    finally:
        report.analyses = len(report.per_analysis)
        report.seconds = time.monotonic() - started
        release(owner, report)
    cache.delete(USAGE_CACHE_KEY)
    log.info(
        "prune: %d scores rolled up (%d analyses, %d rollup rows), %d rollups and %d "
        "incidents deleted, %d batches, %.1f s%s",
        report.scores,
        report.analyses,
        report.rollups_written,
        report.rollups_deleted,
        report.incidents,
        report.batches,
        report.seconds,
        " (stopped early; the next run carries on)" if report.stopped else "",
    )
    return report


# --- storage use, for operators ----------------------------------------------------------


def _row_count(model) -> int:
    """Exact on SQLite (cheap enough); PostgreSQL's planner estimate there (COUNT(*) of a
    table of millions of rows reads all of it)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                [model._meta.db_table],
            )
            row = cursor.fetchone()
        if row and row[0] is not None and row[0] >= 0:
            return int(row[0])
    return model.objects.count()


def _database_bytes() -> int | None:
    try:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_database_size(current_database())")
                return int(cursor.fetchone()[0])
        if connection.vendor == "sqlite":
            name = str(connection.settings_dict["NAME"])
            return sum(os.path.getsize(p) for p in (name, name + "-wal") if os.path.exists(p))
    except (OSError, TypeError):
        return None
    return None


def _tree_bytes(root: str) -> tuple[int, int]:
    files = size = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            try:
                size += os.stat(os.path.join(folder, name)).st_size
                files += 1
            except OSError:
                continue  # removed while we walked
    return files, size


def storage_usage() -> dict[str, object]:
    """Rows, database bytes, media bytes as the last prune counted them, and the last prune;
    cached a minute (row counts are too dear for every page view). Web requests never walk
    MEDIA_ROOT: the prune (worker or `manage.py prune`) does, off the request path."""
    usage = cache.get(USAGE_CACHE_KEY)
    if usage is not None:
        return usage
    last = MaintenanceLease.objects.filter(name=LEASE_NAME).first()
    result = (last.last_result or {}) if last else {}
    media_files, media_bytes = result.get("media_files"), result.get("media_bytes")
    usage = {
        "scores": _row_count(FrameScore),
        "rollups": _row_count(ScoreRollup),
        "incidents": Incident.objects.count(),
        "database_bytes": _database_bytes(),
        "media_files": media_files,
        "media_bytes": media_bytes,
        "retention_days": settings.DETECTION_RETENTION_DAYS,
        "last_prune": last.last_finished_at if last else None,
        "last_prune_scores": (last.last_result or {}).get("scores") if last else None,
    }
    cache.set(USAGE_CACHE_KEY, usage, USAGE_CACHE_SECONDS)
    return usage
