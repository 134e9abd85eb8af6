"""Analyses, scores, incidents and examples are visible exactly when their camera is."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from cameras.access import visible_cameras

from .models import Analysis, Exemplar, Incident


def visible_analyses(user: Any) -> QuerySet[Analysis]:
    return Analysis.objects.filter(camera__in=visible_cameras(user))


def visible_incidents(user: Any) -> QuerySet[Incident]:
    return Incident.objects.filter(analysis__camera__in=visible_cameras(user))


def visible_exemplars(user: Any) -> QuerySet[Exemplar]:
    """A camera's examples and its analyses' examples, for those who may see the camera."""
    cameras = visible_cameras(user).values("pk")
    return Exemplar.objects.filter(Q(camera__in=cameras) | Q(analysis__camera__in=cameras))
