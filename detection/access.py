"""Analyses, scores and incidents are visible exactly when their camera is."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from cameras.access import visible_cameras

from .models import Analysis, Incident


def visible_analyses(user: Any) -> QuerySet[Analysis]:
    return Analysis.objects.filter(camera__in=visible_cameras(user))


def visible_incidents(user: Any) -> QuerySet[Incident]:
    return Incident.objects.filter(analysis__camera__in=visible_cameras(user))
