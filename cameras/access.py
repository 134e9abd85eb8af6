"""Who may see what: the one rule every page, export and websocket uses.

Superusers and members of the `operators` group see every camera; everyone else sees the
cameras they are a viewer of, directly or through one of their groups. Anonymous and
inactive users see nothing. Hidden objects answer 404, exactly like missing ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet

from .models import Camera

OPERATORS_GROUP = "operators"
# Values in one IN (...) of a batched query: far under any database's limit.
IN_CHUNK = 500


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


def visible_camera_pairs(pairs: Iterable[tuple[Any, Any]]) -> set[tuple[Any, Any]]:
    """The (user pk, camera pk) pairs, of the (user, camera pk) pairs asked, whose user may
    see that camera: the rule above for many users at once, in a few queries whatever their
    number (the live sockets' re-check asks it for every open socket of a process).

    The users count as given: their flags (`is_active`, `is_superuser`) as loaded.
    """
    pairs = list(pairs)  # read twice below
    users = {u.pk: u for u, _ in pairs if u and u.is_authenticated and u.is_active}
    wanted = {(u.pk, camera) for u, camera in pairs if u and u.pk in users}
    if not wanted:
        return set()
    cameras = {camera for _, camera in wanted}
    everything = {pk for pk, user in users.items() if user.is_superuser}
    for chunk in in_chunks(users.keys() - everything):
        operators = Group.objects.filter(name=OPERATORS_GROUP, user__in=chunk)
        everything.update(operators.values_list("user", flat=True))
    seen: set[tuple[Any, Any]] = set()
    if everything:  # they see every camera that exists
        existing: set[Any] = set()
        for chunk in in_chunks(cameras):
            existing.update(Camera.objects.filter(pk__in=chunk).values_list("pk", flat=True))
        seen = {(pk, camera) for pk, camera in wanted if pk in everything and camera in existing}
    for some_users in in_chunks(users.keys() - everything):
        for some_cameras in in_chunks(cameras):
            shared = Camera.objects.filter(pk__in=some_cameras)
            # Directly or through a group; values_list reuses the filter's join, so each row
            # is a (camera, user) pair that matched.
            direct = shared.filter(viewers__in=some_users).values_list("pk", "viewers")
            grouped = shared.filter(viewer_groups__user__in=some_users).values_list(
                "pk", "viewer_groups__user"
            )
            seen.update((user, camera) for camera, user in (*direct, *grouped))
    return seen & wanted


def in_chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    """`values` in lists of at most IN_CHUNK, for queries of the form `pk__in=chunk`."""
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == IN_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
