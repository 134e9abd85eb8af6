"""What operators do to analyses and incidents: queue, stop, re-run, acknowledge, give
feedback on an incident, and add or remove the examples a camera learns its normal from.

Plain functions over querysets, shared by the admin's actions and the portal's buttons so
there is one implementation. They change the database only; callers say so to the user.

Status changes are single conditional UPDATEs (`WHERE status IN ...`), so an operator never
overwrites a transition the worker made in the meantime. Once committed, each change is
published to the analysis's live pages (best effort, like everything on the channel layer).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from cameras.models import Camera

from .live.messages import incident_message, status_message
from .models import Analysis, Exemplar, FrameScore, Incident, LearnedMemory

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
    """Remove incident thumbnails and frames, and exemplar images, once the rows that
    pointed at them are gone for good (all of them live in the default storage)."""
    storage = Incident._meta.get_field("thumbnail").storage
    for name in names:
        try:
            storage.delete(name)
        except (OSError, SuspiciousFileOperation):  # must not break the caller
            logger.warning("Could not delete file %s", name, exc_info=True)


def rerun(queryset: QuerySet[Analysis]) -> Rerun:
    """Delete the analyses' scores and incidents and queue them again from the start.

    What an analysis learned goes too (a re-run relearns from its own learning period);
    the examples operators gave, feedback included, are kept: they hold copies of their
    images, not references to the incidents' files."""
    analyses = list(queryset.select_related("camera").order_by("pk"))
    ids = [a.pk for a in analyses]
    with transaction.atomic():
        # Lock the rows (PostgreSQL) so a worker cannot claim one halfway through.
        list(Analysis.objects.select_for_update().filter(pk__in=ids).values_list("pk"))
        incidents = Incident.objects.filter(analysis_id__in=ids)
        files = []
        for thumbnail, frames in incidents.values_list("thumbnail", "frames"):
            files += [thumbnail] if thumbnail else []
            files += [name for name in frames or () if isinstance(name, str) and name]
        scores_deleted, _ = FrameScore.objects.filter(analysis_id__in=ids).delete()
        incidents_deleted, _ = incidents.delete()
        LearnedMemory.objects.filter(analysis_id__in=ids).delete()
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
        transaction.on_commit(lambda: _delete_files(files))
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


# --- Examples and feedback --------------------------------------------------------------

# The example an incident's feedback teaches: a false alarm shows the camera's normal.
FEEDBACK_EXAMPLES = {
    Incident.Feedback.FALSE_ALARM: Exemplar.Kind.NORMAL,
    Incident.Feedback.CONFIRMED: Exemplar.Kind.ANOMALY,
}
# The worker keeps a few frames around the peak; never copy more than this many.
MAX_FEEDBACK_FRAMES = 16


@dataclass(frozen=True)
class FeedbackResult:
    incident: Incident  # as stored afterwards (acknowledged_by and feedback_by selected)
    changed: bool  # False: this feedback had been given already; nothing was done
    exemplars: int  # examples made from the incident's frames by this call
    no_frame: bool  # changed, but the incident kept no frame to make an example of


def exemplars_for(analysis: Analysis) -> QuerySet[Exemplar]:
    """The examples an analysis uses: its own and its camera's."""
    return Exemplar.objects.filter(Q(analysis=analysis) | Q(camera_id=analysis.camera_id))


def _exemplar_name() -> str:
    # Generated: nothing user-typed becomes a path (upload_to adds exemplars/<date>/).
    return f"{uuid.uuid4().hex}.jpg"


def _frame_index(name: str) -> int | None:
    """The worker names an incident's frames <frame index>.jpg (worker/keyframes.py)."""
    stem = PurePosixPath(name).stem
    return int(stem) if stem.isdigit() else None


def _incident_images(incident_id: int) -> list[tuple[int | None, bytes]]:
    """(frame index, JPEG bytes) of the incident's clean frames around its peak; for an
    incident without them (older ones), its thumbnail; [] when it has neither."""
    row = (
        Incident.objects.filter(pk=incident_id)
        .values_list("frames", "thumbnail", "peak_frame_index")
        .first()
    )
    if row is None:
        return []
    frames, thumbnail, peak_frame_index = row
    names = [n for n in (frames if isinstance(frames, list) else []) if isinstance(n, str) and n]
    images = []
    for name in names[:MAX_FEEDBACK_FRAMES]:
        data = _read_file(name, incident_id)
        if data is not None:
            images.append((_frame_index(name), data))
    if not images and thumbnail:
        data = _read_file(thumbnail, incident_id)
        if data is not None:
            images.append((peak_frame_index, data))
    return images


def _read_file(name: str, incident_id: int) -> bytes | None:
    storage = Incident._meta.get_field("thumbnail").storage
    try:
        with storage.open(name, "rb") as handle:
            return handle.read()
    except (OSError, SuspiciousFileOperation) as exc:
        logger.warning("incident %s: cannot read %s (%s)", incident_id, name, exc)
        return None


def _save_exemplars(rows: Sequence[tuple[Exemplar, bytes]], saved: list[str]) -> None:
    """Write each image into its exemplar's own file, then the row; `saved` collects the
    file names, so a caller whose transaction fails removes them."""
    for exemplar, data in rows:
        exemplar.image.save(_exemplar_name(), ContentFile(data), save=False)
        saved.append(exemplar.image.name)
        exemplar.save()


def feedback(incident: Incident, kind: str, user: Any) -> FeedbackResult:
    """Record `user`'s verdict on an incident and teach the camera from it.

    `kind` is Incident.Feedback.FALSE_ALARM ("false_alarm": its frames become normal
    examples of the camera, for all its analyses) or CONFIRMED ("confirmed": anomaly
    examples). The images are copied into the exemplars' own files, so pruning incidents
    never breaks an example. The incident is acknowledged too if it was not yet (the first
    acknowledger is kept). Giving the same feedback again changes nothing; the other one
    replaces the incident's feedback examples. One conditional UPDATE decides which call
    does the work when two land together; the incident is published after commit.
    """
    verdict = Incident.Feedback(kind)  # ValueError for anything else
    if verdict not in FEEDBACK_EXAMPLES:
        raise ValueError(f"not a feedback kind: {kind!r}")
    # Read the files before taking any lock: the worker may be storing meanwhile.
    images = _incident_images(incident.pk)
    camera_id = Analysis.objects.filter(pk=incident.analysis_id).values_list(
        "camera_id", flat=True
    )[0]
    now = timezone.now()
    saved: list[str] = []
    created = 0
    try:
        with transaction.atomic():
            changed = (
                Incident.objects.filter(pk=incident.pk)
                .exclude(feedback=verdict)
                .update(feedback=verdict, feedback_by=user, feedback_at=now)
            )
            if changed:
                Incident.objects.filter(pk=incident.pk, acknowledged_at__isnull=True).update(
                    acknowledged_by=user, acknowledged_at=now
                )
                previous = Exemplar.objects.filter(
                    incident_id=incident.pk, source=Exemplar.Source.FEEDBACK
                )
                stale = [name for name in previous.values_list("image", flat=True) if name]
                previous.delete()
                rows = [
                    (
                        Exemplar(
                            camera_id=camera_id,
                            kind=FEEDBACK_EXAMPLES[verdict],
                            source=Exemplar.Source.FEEDBACK,
                            incident_id=incident.pk,
                            frame_index=frame_index,
                            created_by=user,
                        ),
                        data,
                    )
                    for frame_index, data in images
                ]
                _save_exemplars(rows, saved)
                created = len(rows)
                transaction.on_commit(lambda: _delete_files(stale))
            stored = Incident.objects.select_related(
                "analysis", "acknowledged_by", "feedback_by"
            ).get(pk=incident.pk)
            if changed:
                _publish_after_commit(stored.analysis_id, "incident", incident_message(stored))
    except BaseException:
        _delete_files(saved)  # the rows were rolled back: their files must go too
        raise
    return FeedbackResult(
        incident=stored,
        changed=bool(changed),
        exemplars=created,
        no_frame=bool(changed) and not images,
    )


def add_exemplars(
    images: Sequence[bytes],
    *,
    kind: str,
    source: str,
    user: Any,
    camera: Camera | None = None,
    analysis: Analysis | None = None,
) -> list[Exemplar]:
    """Store JPEG `images` as examples of `camera` (every analysis of it) or of one
    `analysis`, all or none. The worker embeds them and picks them up while it runs."""
    if (camera is None) == (analysis is None):
        raise ValueError("an example belongs to a camera or to an analysis")
    kind = Exemplar.Kind(kind)
    source = Exemplar.Source(source)
    saved: list[str] = []
    rows = [
        (
            Exemplar(camera=camera, analysis=analysis, kind=kind, source=source, created_by=user),
            data,
        )
        for data in images
    ]
    try:
        with transaction.atomic():
            _save_exemplars(rows, saved)
    except BaseException:
        _delete_files(saved)
        raise
    return [exemplar for exemplar, _ in rows]


def delete_exemplars(queryset: QuerySet[Exemplar]) -> int:
    """Delete the examples and, once that is committed, their image files."""
    with transaction.atomic():
        ids = list(queryset.values_list("pk", flat=True))
        exemplars = Exemplar.objects.filter(pk__in=ids)
        names = [name for name in exemplars.values_list("image", flat=True) if name]
        deleted, _ = exemplars.delete()
        transaction.on_commit(lambda: _delete_files(names))
    return deleted
