"""Admin for analyses and incidents: the operators' controls for the detection worker.

FrameScore is deliberately not registered: it holds one row per scored frame (millions per
camera per month), so a changelist over it is useless and dangerous. Scores are read on the
analysis pages and exports, and removed here only through the "Re-run" action.

Status changes made by the actions are single conditional UPDATEs (`WHERE status IN ...`), so
an action never overwrites a transition the worker made in the meantime.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import transaction
from django.db.models import Count, QuerySet
from django.db.models.fields.files import FieldFile
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from .models import Analysis, FrameScore, Incident

logger = logging.getLogger(__name__)

Status = Analysis.Status

QUEUEABLE = (Status.DRAFT, Status.STOPPED, Status.FAILED, Status.COMPLETED)
STOPPABLE = (Status.QUEUED, Status.RUNNING)

LEASE_CLEARED: dict[str, Any] = {
    "lease_owner": "",
    "lease_heartbeat_at": None,
    "lease_expires_at": None,
}

# What a re-run resets: the analysis looks as if it had never been scored.
SUMMARY_RESET: dict[str, Any] = {
    "frames_scored": 0,
    "last_frame_index": None,
    "last_score": None,
    "peak_score": None,
    "peak_time_s": None,
    "average_score": None,
    "metadata": {},
    "progress": 0.0,
    "error_message": "",
    "started_at": None,
    "finished_at": None,
    **LEASE_CLEARED,
}


def _count(n: int, singular: str = "analysis", plural: str = "analyses") -> str:
    return f"{n} {singular if n == 1 else plural}"


def _delete_files(names: Iterable[str]) -> None:
    """Remove incident thumbnails once the rows that pointed at them are gone for good."""
    storage = Incident._meta.get_field("thumbnail").storage
    for name in names:
        try:
            storage.delete(name)
        except OSError:  # a missing or locked file must not break the admin
            logger.warning("Could not delete incident thumbnail %s", name, exc_info=True)


@admin.register(Analysis)
class AnalysisAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "camera",
        "status",
        "progress_percent",
        "frames_scored",
        "peak",
        "live_link",
    )
    list_filter = ("status", "camera")
    search_fields = ("name", "camera__name", "normal_prompts", "anomaly_prompts")
    list_select_related = ("camera",)
    autocomplete_fields = ("camera",)
    actions = ("queue", "stop", "rerun")
    readonly_fields = (
        "live_link",
        "progress_percent",
        "error_message",
        "lease_owner",
        "lease_heartbeat_at",
        "lease_expires_at",
        "started_at",
        "finished_at",
        "frames_scored",
        "last_frame_index",
        "last_score",
        "peak_score",
        "peak_time_s",
        "average_score",
        "metadata_pretty",
        "created_by",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("camera", "name", "live_link")}),
        (
            "Prompts",
            {
                "fields": ("normal_prompts", "anomaly_prompts"),
                "description": "One prompt per line; each class's prompts are averaged "
                "into one text embedding (a prompt ensemble).",
            },
        ),
        ("Scoring", {"fields": ("threshold", "sampling_fps", "window_size")}),
        (
            "Incidents",
            {
                "fields": (
                    "smoothing_window",
                    "incident_open_frames",
                    "incident_close_frames",
                    "hysteresis",
                )
            },
        ),
        (
            "Options",
            {"fields": ("localize", "skip_black_frames", "motion_gating", "rescore_interval_s")},
        ),
        (
            "Status",
            {
                "fields": (
                    "status",
                    "progress_percent",
                    "error_message",
                    "lease_owner",
                    "lease_heartbeat_at",
                    "lease_expires_at",
                    "started_at",
                    "finished_at",
                ),
                "description": "Use the Queue, Stop and Re-run actions of the list to "
                "change the status of an existing analysis.",
            },
        ),
        (
            "Summary",
            {
                "fields": (
                    "frames_scored",
                    "last_frame_index",
                    "last_score",
                    "peak_score",
                    "peak_time_s",
                    "average_score",
                    "metadata_pretty",
                    "created_by",
                    "created_at",
                    "updated_at",
                ),
            },
        ),
    )

    # --- forms -----------------------------------------------------------------------

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A new analysis may start as a draft or queued; afterwards the status belongs to
        # the worker and the actions (which also clear errors and leases consistently).
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if obj is None else (*fields, "status")

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any):
        if db_field.name == "status":
            kwargs["choices"] = [
                (Status.DRAFT, Status.DRAFT.label),
                (Status.QUEUED, Status.QUEUED.label),
            ]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Analysis, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    # --- columns ---------------------------------------------------------------------

    @admin.display(description="Progress", ordering="progress")
    def progress_percent(self, obj: Analysis) -> str:
        return f"{(obj.progress or 0.0) * 100:.0f}%"

    @admin.display(description="Peak score", ordering="peak_score")
    def peak(self, obj: Analysis) -> str:
        return "-" if obj.peak_score is None else f"{obj.peak_score:.3f}"

    @admin.display(description="Portal")
    def live_link(self, obj: Analysis) -> str:
        if obj.pk is None:
            return "-"
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">Live page</a>', obj.get_absolute_url()
        )

    @admin.display(description="Metadata")
    def metadata_pretty(self, obj: Analysis) -> str:
        if not obj.metadata:
            return "-"
        text = json.dumps(obj.metadata, indent=2, sort_keys=True, default=str)
        return format_html("<pre>{}</pre>", text)

    # --- actions ---------------------------------------------------------------------

    def _transition(
        self,
        request: HttpRequest,
        queryset: QuerySet[Analysis],
        allowed: Iterable[str],
        changes: dict[str, Any],
        message: str,
    ) -> tuple[int, int]:
        """Apply `changes` to the selected analyses whose status is in `allowed`.

        Returns (changed, skipped)."""
        allowed = tuple(allowed)
        selected = list(queryset.select_related("camera"))
        eligible = [a for a in selected if a.status in allowed]
        with transaction.atomic():
            changed = Analysis.objects.filter(
                pk__in=[a.pk for a in eligible], status__in=allowed
            ).update(**changes, updated_at=timezone.now())
        for obj in eligible:
            self.log_change(request, obj, message)
        return changed, len(selected) - changed

    @admin.action(description="Queue selected analyses", permissions=["change"])
    def queue(self, request: HttpRequest, queryset: QuerySet[Analysis]) -> None:
        changed, skipped = self._transition(
            request,
            queryset,
            QUEUEABLE,
            {"status": Status.QUEUED, "error_message": "", **LEASE_CLEARED},
            "Queued from the admin.",
        )
        self.message_user(request, f"Queued {_count(changed)}.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"Skipped {_count(skipped)} already queued or running.",
                messages.WARNING,
            )

    @admin.action(description="Stop selected analyses", permissions=["change"])
    def stop(self, request: HttpRequest, queryset: QuerySet[Analysis]) -> None:
        # Clearing the lease tells the worker holding it to let go at its next heartbeat.
        changed, skipped = self._transition(
            request,
            queryset,
            STOPPABLE,
            {"status": Status.STOPPED, **LEASE_CLEARED},
            "Stopped from the admin.",
        )
        self.message_user(request, f"Stopped {_count(changed)}.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"Skipped {_count(skipped)} that {'was' if skipped == 1 else 'were'} "
                "neither queued nor running.",
                messages.WARNING,
            )

    @admin.action(
        description="Re-run selected analyses (delete their scores and incidents)",
        permissions=["change"],
    )
    def rerun(self, request: HttpRequest, queryset: QuerySet[Analysis]) -> TemplateResponse | None:
        analyses = list(queryset.select_related("camera").order_by("pk"))
        ids = [a.pk for a in analyses]
        if request.method == "POST" and request.POST.get("post") == "yes":
            self._rerun(request, analyses)
            return None  # back to the changelist, like delete_selected

        score_counts = dict(
            FrameScore.objects.filter(analysis_id__in=ids)
            .order_by()
            .values_list("analysis_id")
            .annotate(n=Count("id"))
        )
        incident_counts = dict(
            Incident.objects.filter(analysis_id__in=ids)
            .order_by()
            .values_list("analysis_id")
            .annotate(n=Count("id"))
        )
        rows = [
            {
                "analysis": a,
                "scores": score_counts.get(a.pk, 0),
                "incidents": incident_counts.get(a.pk, 0),
                "running": a.status == Status.RUNNING,
            }
            for a in analyses
        ]
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": "Re-run analyses?",
            "subtitle": None,
            "rows": rows,
            "queryset": analyses,
            "total_scores": sum(r["scores"] for r in rows),
            "total_incidents": sum(r["incidents"] for r in rows),
            "any_running": any(r["running"] for r in rows),
            "opts": opts,
            "action_name": "rerun",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            [
                f"admin/{opts.app_label}/{opts.model_name}/rerun_confirmation.html",
                f"admin/{opts.app_label}/rerun_confirmation.html",
            ],
            context,
        )

    def _rerun(self, request: HttpRequest, analyses: list[Analysis]) -> None:
        ids = [a.pk for a in analyses]
        with transaction.atomic():
            # Lock the rows (PostgreSQL) so a worker cannot claim one halfway through.
            list(Analysis.objects.select_for_update().filter(pk__in=ids).values_list("pk"))
            incidents = Incident.objects.filter(analysis_id__in=ids)
            thumbnails = [
                name
                for name in incidents.exclude(thumbnail="").values_list("thumbnail", flat=True)
                if name
            ]
            scores_deleted, _ = FrameScore.objects.filter(analysis_id__in=ids).delete()
            incidents_deleted, _ = incidents.delete()
            Analysis.objects.filter(pk__in=ids).update(
                **SUMMARY_RESET, status=Status.QUEUED, updated_at=timezone.now()
            )
            # Files are not transactional: remove them only once the rows are gone for good.
            transaction.on_commit(lambda: _delete_files(thumbnails))
        for obj in analyses:
            self.log_change(request, obj, "Re-run from the admin: scores and incidents deleted.")
        self.message_user(
            request,
            f"Re-queued {_count(len(ids))}; deleted {_count(scores_deleted, 'score', 'scores')} "
            f"and {_count(incidents_deleted, 'incident', 'incidents')}.",
            messages.SUCCESS,
        )


class AcknowledgedFilter(admin.SimpleListFilter):
    title = "acknowledged"
    parameter_name = "acknowledged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Incident]) -> QuerySet[Incident]:
        if self.value() == "yes":
            return queryset.filter(acknowledged_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(acknowledged_at__isnull=True)
        return queryset


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "analysis",
        "started_at",
        "start_time_s",
        "end_time_s",
        "peak_score",
        "is_open",
        "acknowledged_by",
        "acknowledged_at",
    )
    list_filter = (AcknowledgedFilter, "analysis__camera")
    list_select_related = ("analysis__camera", "acknowledged_by")
    search_fields = ("analysis__name", "analysis__camera__name", "note")
    autocomplete_fields = ("analysis",)
    actions = ("acknowledge",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "analysis",
                    ("start_time_s", "end_time_s"),
                    ("started_at", "ended_at"),
                    ("peak_score", "peak_time_s", "peak_frame_index"),
                )
            },
        ),
        ("Thumbnail", {"fields": ("thumbnail", "thumbnail_preview")}),
        ("Acknowledgement", {"fields": ("acknowledged_by", "acknowledged_at", "note")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Incidents are the worker's record: once one exists only the note is editable.
        # On the add page (an incident recorded by hand) the facts are still open.
        if obj is None:
            return ["thumbnail_preview", "acknowledged_by", "acknowledged_at"]
        fields = [f.name for f in Incident._meta.fields if f.name not in ("id", "note")]
        return [*fields, "thumbnail_preview"]

    @admin.display(description="Open", boolean=True)
    def is_open(self, obj: Incident) -> bool:
        return obj.is_open

    @admin.display(description="Preview")
    def thumbnail_preview(self, obj: Incident) -> str:
        thumbnail: FieldFile = obj.thumbnail
        if not thumbnail:
            return "-"
        return format_html(
            '<a href="{0}" target="_blank" rel="noopener">'
            '<img src="{0}" alt="Thumbnail of incident {1}" style="max-width: 320px; '
            'height: auto;"></a>',
            thumbnail.url,
            obj.pk,
        )

    @admin.action(description="Acknowledge selected incidents", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        now = timezone.now()
        pending = list(queryset.filter(acknowledged_at__isnull=True).select_related("analysis"))
        total = queryset.count()
        # Conditional update: an incident acknowledged meanwhile keeps its first acknowledger.
        changed = Incident.objects.filter(
            pk__in=[i.pk for i in pending], acknowledged_at__isnull=True
        ).update(acknowledged_by=request.user, acknowledged_at=now)
        for obj in pending:
            self.log_change(request, obj, "Acknowledged.")
        self.message_user(
            request, f"Acknowledged {_count(changed, 'incident', 'incidents')}.", messages.SUCCESS
        )
        if total - changed:
            self.message_user(
                request,
                f"Skipped {_count(total - changed, 'incident', 'incidents')} already acknowledged.",
                messages.WARNING,
            )
