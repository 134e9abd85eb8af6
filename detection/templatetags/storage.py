"""`{% storage_usage %}`: the dashboard's storage block, for operators only: superusers, and
staff members of the `operators` group (cameras.access.sees_everything). Other users cost
no query at all; the numbers are cached a minute (detection.retention.storage_usage)."""

from __future__ import annotations

from typing import Any

from django import template

from cameras.access import sees_everything
from detection import retention

register = template.Library()


@register.inclusion_tag("includes/storage_usage.html", takes_context=True)
def storage_usage(context: template.Context) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if not (
        getattr(user, "is_superuser", False)
        or (getattr(user, "is_staff", False) and sees_everything(user))
    ):
        return {"usage": None}
    return {"usage": retention.storage_usage()}
