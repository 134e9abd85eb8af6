"""A user's own e-mail opt-in for a camera's incidents (detection.worker.notifications).

One POST, for the signed-in user only, on a camera they may see (hidden answers 404 like
missing). The admin edits anyone's subscriptions; this page edits only one's own.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from cameras.access import visible_cameras
from detection.models import IncidentSubscription
from detection.web.incidents import safe_next


def subscribed(user: object, camera_id: int) -> bool:
    return IncidentSubscription.objects.filter(user=user, camera_id=camera_id, email=True).exists()


@login_required
@require_POST
def email_subscription(request: HttpRequest, pk: int) -> HttpResponse:
    camera = get_object_or_404(visible_cameras(request.user), pk=pk)
    turn_on = request.POST.get("email") == "on"
    if turn_on and not request.user.email:
        messages.error(request, "Your account has no e-mail address: ask an administrator.")
    else:
        IncidentSubscription.objects.update_or_create(
            user=request.user, camera=camera, defaults={"email": turn_on}
        )
        messages.success(
            request,
            f"You will get an e-mail when an incident opens on {camera.name}."
            if turn_on
            else f"No more incident e-mails about {camera.name}.",
        )
    return redirect(safe_next(request) or "dashboard")
