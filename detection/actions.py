"""What operators do to analyses and incidents: queue, stop, re-run, acknowledge.

Plain functions over querysets, shared by the admin's actions and the portal's buttons so
there is one implementation. They change the database only; callers say so to the user.

Status changes are single conditional UPDATEs (`WHERE status IN ...`), so an operator never
overwrites a transition the worker made in the meantime. Once committed, each change is
published to the analysis's live pages (best effort, like everything on the channel layer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from .live.messages import incident_message, status_message
from .models import Analysis, FrameScore, Incident

logger = logging.getLogger(__name__)

Status = Analysis.Status

QUEUEABLE = (Status.DRAFT, Status.STOPPED, Status.FAILED, Status.COMPLETED)
STOPPABLE = (Status.QUEUED, Status.RUNNING)

LEASE_CLEARED: dict[str, Any] = {
    "lease_owner": "",
    "lease_heartbeat_at": None,
    "lease_expires_at": None,
}

# What a re-run resets: the analysis looks as if it had never been scored.
SUMMARY_RESET: dict[str, Any] = {
    "frames_scored": 0,
    "last_frame_index": None,
    "last_score": None,
    "peak_score": None,
    "peak_time_s": None,
    "average_score": None,
    "metadata": {},  # but what the upload recorded is kept (Analysis.UPLOAD_METADATA)
    "progress": 0.0,
    "error_message": "",
    "started_at": None,
    "finished_at": None,
    **LEASE_CLEARED,
}


@dataclass(frozen=True)
class Transition:
    """The outcome of queue() or stop()."""

    changed: int
    skipped: int
    # The analyses that were eligible when read (for audit logs); `changed` may be lower
    # when the worker moved one on in between.
    eligible: list[Analysis] = field(default_factory=list)


@dataclass(frozen=True)
class Rerun:
    analyses: list[Analysis]
    scores_deleted: int
    incidents_deleted: int


@dataclass(frozen=True)
class Acknowledgement:
    changed: int
    skipped: int
    pending: list[Incident] = field(default_factory=list)


def _publish_after_commit(analysis_id: int, kind: str, payload: dict[str, Any]) -> None:
    from .live.publisher import ChannelPublisher

    transaction.on_commit(lambda: ChannelPublisher().publish(analysis_id, kind, payload))


def _publish_statuses(ids: Iterable[int], extra: dict[str, Any] | None = None) -> None:
    for pk, status, progress, error in Analysis.objects.filter(pk__in=list(ids)).values_list(
        "pk", "status", "progress", "error_message"
    ):
        message = status_message(status, progress=progress, error_message=error, **(extra or {}))
        _publish_after_commit(pk, "status", message)


def count(n: int, singular: str = "analysis", plural: str = "analyses") -> str:
    return f"{n} {singular if n == 1 else plural}"


def _transition(
    queryset: QuerySet[Analysis], allowed: Iterable[str], changes: dict[str, Any]
) -> Transition:
    allowed = tuple(allowed)
    selected = list(queryset.select_related("camera"))
    eligible = [a for a in selected if a.status in allowed]
    with transaction.atomic():
        changed = Analysis.objects.filter(
            pk__in=[a.pk for a in eligible], status__in=allowed
        ).update(**changes, updated_at=timezone.now())
        if changed:
            _publish_statuses(a.pk for a in eligible)
    return Transition(changed=changed, skipped=len(selected) - changed, eligible=eligible)


def queue(queryset: QuerySet[Analysis]) -> Transition:
    """Hand drafts, stopped, failed and completed analyses to the worker."""
    return _transition(
        queryset, QUEUEABLE, {"status": Status.QUEUED, "error_message": "", **LEASE_CLEARED}
    )


def stop(queryset: QuerySet[Analysis]) -> Transition:
    """Stop queued and running analyses.

    Clearing the lease tells the worker holding it to let go at its next heartbeat."""
    return _transition(queryset, STOPPABLE, {"status": Status.STOPPED, **LEASE_CLEARED})


def _delete_files(names: Iterable[str]) -> None:
    """Remove incident thumbnails once the rows that pointed at them are gone for good."""
    storage = Incident._meta.get_field("thumbnail").storage
    for name in names:
        try:
            storage.delete(name)
        except OSError:  # a missing or locked file must not break the caller
            logger.warning("Could not delete incident thumbnail %s", name, exc_info=True)


def rerun(queryset: QuerySet[Analysis]) -> Rerun:
    """Delete the analyses' scores and incidents and queue them again from the start."""
    analyses = list(queryset.select_related("camera").order_by("pk"))
    ids = [a.pk for a in analyses]
    with transaction.atomic():
        # Lock the rows (PostgreSQL) so a worker cannot claim one halfway through.
        list(Analysis.objects.select_for_update().filter(pk__in=ids).values_list("pk"))
        incidents = Incident.objects.filter(analysis_id__in=ids)
        thumbnails = [
            name
            for name in incidents.exclude(thumbnail="").values_list("thumbnail", flat=True)
            if name
        ]
        scores_deleted, _ = FrameScore.objects.filter(analysis_id__in=ids).delete()
        incidents_deleted, _ = incidents.delete()
        now = timezone.now()
        for analysis in analyses:
            kept = {
                key: value
                for key, value in (analysis.metadata or {}).items()
                if key in Analysis.UPLOAD_METADATA
            }
            Analysis.objects.filter(pk=analysis.pk).update(
                **{**SUMMARY_RESET, "metadata": kept}, status=Status.QUEUED, updated_at=now
            )
        # Files are not transactional: remove them only once the rows are gone for good.
        transaction.on_commit(lambda: _delete_files(thumbnails))
        # `reset`: pages drop the scores and incidents they hold; new ones start afresh.
        _publish_statuses(ids, {"reset": True})
    return Rerun(
        analyses=analyses, scores_deleted=scores_deleted, incidents_deleted=incidents_deleted
    )


def acknowledge(queryset: QuerySet[Incident], user: Any) -> Acknowledgement:
    """Record `user` and now on every incident not acknowledged yet.

    Conditional update: an incident acknowledged meanwhile keeps its first acknowledger."""
    now = timezone.now()
    pending = list(queryset.filter(acknowledged_at__isnull=True).select_related("analysis"))
    total = queryset.count()
    changed = Incident.objects.filter(
        pk__in=[i.pk for i in pending], acknowledged_at__isnull=True
    ).update(acknowledged_by=user, acknowledged_at=now)
    if changed:
        for incident in Incident.objects.filter(
            pk__in=[i.pk for i in pending], acknowledged_by=user, acknowledged_at=now
        ).select_related("acknowledged_by"):
            payload = incident_message(incident)
            _publish_after_commit(incident.analysis_id, "incident", payload)
    return Acknowledgement(changed=changed, skipped=total - changed, pending=pending)
