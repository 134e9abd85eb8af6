"""The dashboard: a live wall of every camera the user may see, its analyses, their latest
frame, score and chart (the data: detection.web.wall; the script: static/js/dashboard.js)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_safe

from . import wall


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
    cameras = wall.decorate(wall.wall_cameras(request.user))
    return render(
        request,
        "dashboard.html",
        {
            "cameras": cameras,
            "add_camera_url": _admin_add_camera_url(request.user),
            "poll_ms": round(wall.POLL_SECONDS * 1000),
        },
    )


@require_safe
def wall_state(request: HttpRequest) -> JsonResponse:
    """The status poll: JSON, never cached. Anonymous callers get 403, not a login page
    (a script cannot follow a redirect to a form)."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "Log in to see the cameras."}, status=403)
    response = JsonResponse(wall.state(request.user))
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_safe
def wall_card(request: HttpRequest, pk: int) -> HttpResponse:
    """One camera's card, rendered by the page's own template (new or changed cameras)."""
    camera = wall.wall_cameras(request.user).filter(pk=pk).first()
    if camera is None:
        raise Http404("No such camera.")
    response = render(request, "includes/camera_card.html", {"camera": wall.decorate([camera])[0]})
    response["Cache-Control"] = "no-store"
    return response
