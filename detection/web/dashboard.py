"""The dashboard: every camera the user may see, with its analyses and latest scores."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse

from cameras.access import visible_cameras
from detection.models import Analysis


def _admin_add_camera_url(user: object) -> str | None:
    """The admin's "add camera" page, for users the admin would actually let in."""
    if not (getattr(user, "is_staff", False) and user.has_perm("cameras.add_camera")):
        return None
    try:
        return reverse("admin:cameras_camera_add")
    except NoReverseMatch:  # Camera not registered in the admin (yet)
        return None


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    # One query for the cameras and one for all their analyses, however many there are.
    analyses = Analysis.objects.order_by("name", "id")
    cameras = visible_cameras(request.user).prefetch_related(Prefetch("analyses", analyses))
    return render(
        request,
        "dashboard.html",
        {"cameras": cameras, "add_camera_url": _admin_add_camera_url(request.user)},
    )
