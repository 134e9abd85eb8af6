"""Camera admin: where operators register sources and share them with viewers.

`ScopedToVisibleCameras` is here because it applies the cameras app's access rule; the
detection admin uses it too.

Source validation lives in `Camera.clean()`; the admin's ModelForm runs `full_clean()`, so a
bad URL, path or device index comes back as an error on the `source` field.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from portal.admin import ChangedFieldsOnly

from .access import visible_cameras
from .models import Camera


class ScopedToVisibleCameras(admin.ModelAdmin):
    """Staff see and change in the admin only what the portal's access rule shows them.

    Model permissions say what kind of object a staff member may edit; `visible_cameras`
    says which ones, exactly as on the portal's pages: superusers and the operators group
    see every camera, other staff only the cameras shared with them (and their analyses and
    incidents). Foreign-key choices are scoped the same way, so a form cannot point an
    analysis at a camera its author cannot see. A hidden object answers as a missing one.
    """

    camera_path = ""  # lookup from this model to its Camera; "" for Camera itself

    def scope(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if request.user.is_superuser:
            return queryset
        key = f"{self.camera_path}__in" if self.camera_path else "pk__in"
        return queryset.filter(**{key: visible_cameras(request.user).values("pk")})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return self.scope(request, super().get_queryset(request))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any):
        model = db_field.related_model
        related = self.admin_site.is_registered(model) and self.admin_site.get_model_admin(model)
        if isinstance(related, ScopedToVisibleCameras) and "queryset" not in kwargs:
            kwargs["queryset"] = related.scope(request, db_field.related_model._default_manager)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


# One place for the site's branding; the admin is the operators' console.
admin.site.site_header = "clipwatch administration"
admin.site.site_title = "clipwatch administration"
admin.site.index_title = "Cameras, analyses and incidents"


# What the worker and Django record about a camera: shown, never edited.
STATUS_FIELDS = (
    "status",
    "status_changed_at",
    "last_frame_at",
    "last_error",
    "reconnect_count",
    "created_by",
    "created_at",
    "updated_at",
)


@admin.register(Camera)
class CameraAdmin(ScopedToVisibleCameras, ChangedFieldsOnly):
    list_display = ("name", "kind", "status", "enabled", "last_frame_at", "analysis_count")
    list_filter = ("kind", "status", "enabled")
    search_fields = ("name", "source", "description")
    filter_horizontal = ("viewers", "viewer_groups")
    readonly_fields = STATUS_FIELDS
    fieldsets = (
        (
            "Source",
            {"fields": ("name", "kind", "source", "detect_source", "enabled", "description")},
        ),
        (
            "Sharing",
            {
                "fields": ("viewers", "viewer_groups"),
                "description": "Superusers and members of the operators group see every "
                "camera; other users see it only when listed here, directly or by group.",
            },
        ),
        (
            "Status",
            {
                # Filled by the detection worker; shown for diagnosis, never edited.
                "fields": STATUS_FIELDS,
            },
        ),
    )
    # The analyses inline is attached from detection/admin.py: cameras knows nothing of them.

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # The common first camera is the machine's own webcam, device 0: it works on the
        # `make run` machine with nothing else set up. Video files come in through /upload/
        # (which makes their file camera itself), and a stream needs its address typed
        # anyway. The model's default (stream) is left alone, so no migration: /upload/
        # sets its kind explicitly and only this form's starting point was the problem.
        # Query parameters still win (?kind=stream&source=rtsp://...).
        return {
            "kind": Camera.Kind.WEBCAM,
            "source": "0",
            **super().get_changeform_initial_data(request),
        }

    def get_queryset(self, request: HttpRequest) -> QuerySet[Camera]:
        return super().get_queryset(request).annotate(_analysis_count=Count("analyses"))

    @admin.display(description="Analyses", ordering="_analysis_count")
    def analysis_count(self, obj: Camera) -> int:
        return getattr(obj, "_analysis_count", 0)

    def save_model(self, request: HttpRequest, obj: Camera, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
