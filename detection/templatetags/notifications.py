"""`{% email_toggle analysis %}`: the signed-in user's e-mail opt-in for its camera.

A tag rather than view context, so any page that shows a camera can offer it without its
view knowing about subscriptions."""

from __future__ import annotations

from typing import Any

from django import template

from detection.web.notifications import subscribed

register = template.Library()


@register.inclusion_tag("includes/email_toggle.html", takes_context=True)
def email_toggle(context: Any, analysis: Any) -> dict[str, Any]:
    user = context["request"].user
    return {
        "camera_id": analysis.camera_id,
        "on": subscribed(user, analysis.camera_id),
        "has_email": bool(user.email),
        "next": analysis.get_absolute_url(),
        "csrf_token": context.get("csrf_token"),
    }
