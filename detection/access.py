"""Analyses, scores, incidents and examples are visible exactly when their camera is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Q, QuerySet

from cameras.access import in_chunks, visible_camera_pairs, visible_cameras

from .models import Analysis, Exemplar, Incident


def visible_analyses(user: Any) -> QuerySet[Analysis]:
    return Analysis.objects.filter(camera__in=visible_cameras(user))


def visible_analysis_pairs(pairs: Iterable[tuple[Any, int]]) -> set[tuple[Any, int]]:
    """The (user pk, analysis pk) pairs, of the (user, analysis pk) pairs asked, whose user
    may see that analysis (`visible_analyses` for many users, in a few queries)."""
    pairs = list(pairs)
    cameras: dict[int, Any] = {}
    for chunk in in_chunks({pk for _, pk in pairs}):
        cameras.update(Analysis.objects.filter(pk__in=chunk).values_list("pk", "camera_id"))
    asked = [(user, cameras[pk]) for user, pk in pairs if pk in cameras]
    seen = visible_camera_pairs(asked)
    return {
        (user.pk, pk)
        for user, pk in pairs
        if user is not None and pk in cameras and (user.pk, cameras[pk]) in seen
    }


def visible_incidents(user: Any) -> QuerySet[Incident]:
    return Incident.objects.filter(analysis__camera__in=visible_cameras(user))


def visible_exemplars(user: Any) -> QuerySet[Exemplar]:
    """A camera's examples and its analyses' examples, for those who may see the camera."""
    cameras = visible_cameras(user).values("pk")
    return Exemplar.objects.filter(Q(camera__in=cameras) | Q(analysis__camera__in=cameras))
