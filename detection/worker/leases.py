"""Claiming analyses for a worker: atomic, exclusive, recoverable.

A claim is a compare-and-set UPDATE guarded by the claimable condition, so exactly one
worker wins a race on any database. On PostgreSQL the candidates are first locked with
`SELECT ... FOR UPDATE SKIP LOCKED`, so competing workers pick different rows instead of
queueing on the same ones; on SQLite the surrounding transaction is IMMEDIATE (settings),
which serialises claims. A lease expires `DETECTION_LEASE_SECONDS` after the last
heartbeat; an expired `running` analysis (its worker died) is claimable again.

A worker may also hold a lease on an analysis it is not serving: the claim committed but
the database went away before the worker could start the job. `claim(..., serving=...)`
takes such orphans back at once instead of leaving them until the lease expires.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from cameras.models import Camera
from detection.models import Analysis

Status = Analysis.Status


def lease_seconds() -> int:
    return int(settings.DETECTION_LEASE_SECONDS)


def claimable(now=None, *, owner: str = "", serving: Collection[int] = ()) -> Q:
    """Queued, or running with an expired lease, or (given `owner`) running under a lease
    of `owner` that it is not `serving`; on an enabled camera."""
    now = now or timezone.now()
    expired = Q(status=Status.RUNNING) & (
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)
    )
    available = Q(status=Status.QUEUED) | expired
    if owner:
        available |= Q(status=Status.RUNNING, lease_owner=owner) & ~Q(pk__in=list(serving))
    return available & Q(camera__enabled=True)


def claim(
    owner: str,
    *,
    limit: int,
    include_live: bool,
    only_id: int | None = None,
    serving: Collection[int] = (),
) -> list[Analysis]:
    """Claim up to `limit` analyses for `owner`; return them (status running).

    `serving`: the analyses `owner` runs now; any other lease it holds is an orphan of an
    interrupted claim and is taken back."""
    if limit <= 0:
        return []
    now = timezone.now()
    condition = claimable(now, owner=owner, serving=serving)
    candidates: QuerySet[Analysis] = Analysis.objects.filter(condition)
    if not include_live:
        candidates = candidates.filter(camera__kind=Camera.Kind.FILE)
    if only_id is not None:
        candidates = candidates.filter(pk=only_id)
    claimed_ids = []
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        ids = list(candidates.order_by("created_at", "pk").values_list("pk", flat=True)[:limit])
        for pk in ids:
            won = Analysis.objects.filter(condition, pk=pk).update(
                status=Status.RUNNING,
                lease_owner=owner,
                lease_heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds()),
                error_message="",
            )
            if won:
                claimed_ids.append(pk)
    # started_at marks the first claim only: a resumed analysis keeps its original start.
    Analysis.objects.filter(pk__in=claimed_ids, started_at__isnull=True).update(started_at=now)
    analyses = Analysis.objects.select_related("camera").in_bulk(claimed_ids)
    return [analyses[pk] for pk in claimed_ids]


def renew(owner: str, ids: list[int]) -> set[int]:
    """Extend our leases; return the ids we still hold (others were stopped or taken)."""
    if not ids:
        return set()
    now = timezone.now()
    held = Analysis.objects.filter(pk__in=ids, lease_owner=owner, status=Status.RUNNING)
    held.update(lease_heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds()))
    return set(held.values_list("pk", flat=True))


def release(owner: str, pk: int, status: str, **fields: object) -> bool:
    """Give an analysis up with a final or resumable status; False if it was not ours."""
    return bool(
        Analysis.objects.filter(pk=pk, lease_owner=owner).update(
            status=status,
            lease_owner="",
            lease_heartbeat_at=None,
            lease_expires_at=None,
            **fields,
        )
    )
