"""Admin helpers shared by the apps (no app's models here: the apps import this module)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class ChangedFieldsOnly(admin.ModelAdmin):
    """On a change form, write only the fields the operator changed.

    The worker updates these rows while operators edit them (camera status and reconnects,
    analysis status, lease and counters, incident peaks). Saving the whole row would write
    back what the admin read a moment earlier: on PostgreSQL (read committed) a worker
    commit landing between the admin's read and its write would be undone, e.g. a
    completed analysis reverting to running.
    """

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        columns = {f.name for f in obj._meta.concrete_fields}
        fields = [name for name in form.changed_data if name in columns]
        if fields:  # many-to-many fields are saved by save_related()
            auto_now = [f.name for f in obj._meta.concrete_fields if getattr(f, "auto_now", False)]
            obj.save(update_fields=[*fields, *auto_now])
