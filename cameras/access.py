"""Who may see what: the one rule every page, export and websocket uses.

Superusers and members of the `operators` group see every camera; everyone else sees the
cameras they are a viewer of, directly or through one of their groups. Anonymous and
inactive users see nothing. Hidden objects answer 404, exactly like missing ones.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from .models import Camera

OPERATORS_GROUP = "operators"


def sees_everything(user: Any) -> bool:
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or user.groups.filter(name=OPERATORS_GROUP).exists()


def visible_cameras(user: Any) -> QuerySet[Camera]:
    if not (user and user.is_authenticated and user.is_active):
        return Camera.objects.none()
    if sees_everything(user):
        return Camera.objects.all()
    # A subquery of ids, not .distinct() on the join: callers can still order, annotate
    # and count without duplicate rows.
    shared = Camera.objects.filter(Q(viewers=user) | Q(viewer_groups__user=user)).values("pk")
    return Camera.objects.filter(pk__in=shared)
