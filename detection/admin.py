"""Admin for analyses, incidents and examples: the operators' controls for the worker.

FrameScore is deliberately not registered: it holds one row per scored frame (millions per
camera per month), so a changelist over it is useless and dangerous. Scores are read on the
analysis pages and exports, and removed here only through the "Re-run" action.

The actions call detection/actions.py, the one implementation the portal's buttons share;
this module adds the admin's confirmation page, change log and messages.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import models
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from cameras.access import visible_cameras
from cameras.admin import CameraAdmin, ScopedToVisibleCameras
from portal.admin import ChangedFieldsOnly

from . import actions
from .actions import count as _count
from .engine.errors import MediaError
from .engine.limits import split_prompts
from .engine.prompt_help import sound_warnings
from .models import (
    Analysis,
    Exemplar,
    FrameScore,
    Incident,
    IncidentSubscription,
    WebhookDelivery,
)
from .web import upload_handlers
from .web.exemplars import check_clip, clip_field, clip_jpegs, file_label, image_file_to_jpeg
from .web.forms import _size_error, learning_error
from .web.views import threshold_text
from .worker import webhooks

Status = Analysis.Status


def _log_all(
    model_admin: admin.ModelAdmin, request: HttpRequest, objs: list[Any], message: str
) -> None:
    for obj in objs:
        model_admin.log_change(request, obj, message)


STATUS_FIELDS = (
    "status",
    "progress_percent",
    "error_message",
    "lease_owner",
    "lease_heartbeat_at",
    "lease_expires_at",
    "started_at",
    "finished_at",
)
SUMMARY_FIELDS = (
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


class AnalysisInline(admin.TabularInline):
    """The camera's analyses at a glance, with an "Add analysis" link under them.

    The link opens the analysis add form with this camera preselected (`?camera=<id>`)
    rather than adding rows here: prompts are required and do not fit a table row, and the
    full form brings what a row cannot (the prompt assistant, the sound warnings, the
    learning-the-normal rule, "Start now"). Deleting here is off too: it would drop every
    stored score without the confirmation page.
    """

    model = Analysis
    template = "admin/detection/analysis/camera_inline.html"
    fields = ("name", "status", "threshold", "sampling_fps", "admin_link")
    readonly_fields = ("status", "admin_link")
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("-created_at", "-id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # no blank rows: the link below the table opens the full form

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        # Read by the template; None on the camera's add page (nothing to attach to yet)
        # or for staff who may not add analyses. The add form takes ?camera=<id> as the
        # initial camera (Django's get_changeform_initial_data); its choices are scoped to
        # the visible cameras, so a hidden camera's id preselects nothing and cannot be saved.
        formset.add_analysis_url = None
        analyses = self.admin_site.get_model_admin(Analysis)
        if obj is not None and obj.pk is not None and analyses.has_add_permission(request):
            query = urlencode({"camera": obj.pk})
            formset.add_analysis_url = f"{reverse('admin:detection_analysis_add')}?{query}"
        return formset

    @admin.display(description="Analysis")
    def admin_link(self, obj: Analysis) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:detection_analysis_change", args=[obj.pk])
        return format_html('<a href="{}">Open analysis #{}</a>', url, obj.pk)


# Attached from here so that the cameras app never imports detection (dependencies run
# portal -> detection -> cameras -> detection.engine).
CameraAdmin.inlines = (*CameraAdmin.inlines, AnalysisInline)


class AnalysisAdminForm(forms.ModelForm):
    """The portal's rule for learning the normal: normality and combined modes need a
    learning period, or normal examples of the analysis or its camera."""

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "mode" not in self.fields or "learning_seconds" not in self.fields:
            return data
        camera = data.get("camera") or (self.instance.camera if self.instance.camera_id else None)
        normal = Exemplar.objects.filter(kind=Exemplar.Kind.NORMAL)
        scope = Q(camera=camera) if camera is not None else Q(pk__in=[])
        if self.instance.pk is not None:
            scope |= Q(analysis=self.instance)
        problem = learning_error(
            data.get("mode"), data.get("learning_seconds"), normal.filter(scope).exists()
        )
        if problem is not None and "learning_seconds" not in self.errors:
            self.add_error("learning_seconds", problem)
        return data


class AnalysisAddForm(AnalysisAdminForm):
    """The add form: a new analysis starts unless the operator says otherwise.

    The status itself is not on the form: "Start now" hands the saved analysis to the
    worker through actions.queue (the Queue action's path: lease cleared, pages told);
    unticked, it stays a draft, to be queued later from the list.
    """

    start_now = forms.BooleanField(
        required=False,
        initial=True,
        label="Start now",
        help_text="Queue the analysis as soon as it is saved: the worker picks it up. "
        "Untick to save it as a draft and queue it later with the Queue action.",
    )


@admin.register(Analysis)
class AnalysisAdmin(ScopedToVisibleCameras, ChangedFieldsOnly):
    camera_path = "camera"
    form = AnalysisAdminForm
    # Django 6 drops the "http" default for scheme-less URLs; receivers are https.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
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
    actions = ("queue", "stop", "rerun", "regenerate_webhook_secret")
    # The status and summary groups are filled by the worker and the actions, not by hand;
    # a new analysis starts or stays a draft through "Start now" (AnalysisAddForm).
    readonly_fields = (
        "live_link",
        "threshold_in_use_text",
        "webhook_secret_hint",
        *STATUS_FIELDS,
        *SUMMARY_FIELDS,
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
            "Learning the normal",
            {
                "fields": ("mode", "learning_seconds", "auto_threshold", "threshold_in_use_text"),
                "description": "Normality and combined modes learn what this camera looks "
                "like normally during the learning period (or from normal examples) and "
                "flag departures from it: also a covered, moved or defocused camera.",
            },
        ),
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
            {
                "fields": (
                    "localize",
                    "skip_black_frames",
                    "motion_gating",
                    "rescore_interval_s",
                    "retention_days",
                )
            },
        ),
        (
            "Webhook",
            {
                "fields": ("webhook_url", "webhook_secret_hint"),
                "description": "A JSON POST to this URL when an incident opens or closes. "
                "Public addresses only, unless DETECTION_WEBHOOK_ALLOWED_NETWORKS opens "
                "internal ones; redirects are not followed. Each POST is signed with the "
                "analysis's secret (X-Clipwatch-Signature; docs/deployment.md, "
                "'Webhooks'); it is shown once when generated: the list's 'Regenerate "
                "webhook secret' action makes a new one.",
            },
        ),
        (
            "Status",
            {
                "fields": STATUS_FIELDS,
                "description": "Use the Queue, Stop and Re-run actions of the list to "
                "change the status of an existing analysis.",
            },
        ),
        (
            "Summary",
            {
                "fields": SUMMARY_FIELDS,
            },
        ),
    )

    # --- forms -----------------------------------------------------------------------

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is None:
            kwargs["form"] = AnalysisAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None:
            return fieldsets
        # A new analysis has no status, lease or summary yet: the add form asks only
        # whether to start it.
        start = (
            "Start",
            {
                "fields": ("start_now",),
                "description": "A new analysis is queued when saved unless you untick this.",
            },
        )
        return [*(f for f in fieldsets if f[0] not in ("Status", "Summary")), start]

    def save_model(self, request: HttpRequest, obj: Analysis, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        new_secret = bool(obj.webhook_url and not obj.webhook_secret)
        if new_secret:  # the first URL: a secret to sign with, shown only now
            obj.webhook_secret = webhooks.new_secret()
        super().save_model(request, obj, form, change)
        if new_secret:
            if change:  # ChangedFieldsOnly writes only the form's fields
                obj.save(update_fields=["webhook_secret"])
            self._show_secret(request, obj)
        # Saved all the same: prompts that describe sound are advice, not an error.
        for warning in sound_warnings(obj.prompt_list("normal"), obj.prompt_list("anomaly")):
            self.message_user(request, warning, messages.WARNING)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if change:
            return
        analysis = form.instance
        if form.cleaned_data.get("start_now"):
            # After everything of the analysis is saved; the worker sees it on commit.
            actions.queue(Analysis.objects.filter(pk=analysis.pk))
            analysis.refresh_from_db(fields=["status"])
            self.message_user(request, "Queued: a worker will pick it up.", messages.INFO)
        else:
            self.message_user(
                request,
                "Saved as a draft: select it in the list and run the Queue action to start it.",
                messages.INFO,
            )

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        # The form's prompts (as typed, or as stored) get the same warnings as a save, on
        # the page (templates/admin/detection/analysis/change_form.html), unless a message
        # from the save that led here says it already.
        form = context["adminform"].form
        source = form.data if form.is_bound else form.initial

        def prompts(name: str) -> list[str]:
            value = source.get(name)
            return split_prompts(value if isinstance(value, str) else "")

        shown = {str(message) for message in messages.get_messages(request)}
        warnings = sound_warnings(prompts("normal_prompts"), prompts("anomaly_prompts"))
        context["prompt_warnings"] = [w for w in warnings if w not in shown]
        return super().render_change_form(request, context, *args, **kwargs)

    # --- columns ---------------------------------------------------------------------

    @admin.display(description="Signing secret")
    def webhook_secret_hint(self, obj: Analysis) -> str:
        # Never the secret itself: it is shown once, in the message after it is made.
        if not obj.webhook_secret:
            return "none yet (made when a webhook URL is saved)"
        return f"set, ending in …{obj.webhook_secret[-4:]}"

    def _show_secret(self, request: HttpRequest, obj: Analysis) -> None:
        self.message_user(
            request,
            format_html(
                "Webhook signing secret of “{}”: <code>{}</code> — copy it to the receiver "
                "now; it is not shown again.",
                obj.name,
                obj.webhook_secret,
            ),
            messages.WARNING,
        )

    @admin.display(description="Threshold in use")
    def threshold_in_use_text(self, obj: Analysis) -> str:
        return threshold_text(obj) if obj.pk is not None else "-"

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

    @admin.action(description="Queue selected analyses", permissions=["change"])
    def queue(self, request: HttpRequest, queryset: QuerySet[Analysis]) -> None:
        result = actions.queue(queryset)
        _log_all(self, request, result.eligible, "Queued from the admin.")
        changed, skipped = result.changed, result.skipped
        self.message_user(request, f"Queued {_count(changed)}.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"Skipped {_count(skipped)} already queued or running.",
                messages.WARNING,
            )

    @admin.action(description="Regenerate webhook secret", permissions=["change"])
    def regenerate_webhook_secret(self, request: HttpRequest, queryset: QuerySet[Analysis]) -> None:
        # The old secret stops working at once: receivers need the new one (shown once).
        for analysis in queryset.exclude(webhook_url="").order_by("pk"):
            analysis.webhook_secret = webhooks.new_secret()
            analysis.save(update_fields=["webhook_secret"])
            self.log_change(request, analysis, "Regenerated the webhook signing secret.")
            self._show_secret(request, analysis)
        if not queryset.exclude(webhook_url="").exists():
            self.message_user(request, "None of them has a webhook URL.", messages.WARNING)

    @admin.action(description="Stop selected analyses", permissions=["change"])
    def stop(self, request: HttpRequest, queryset: QuerySet[Analysis]) -> None:
        result = actions.stop(queryset)
        _log_all(self, request, result.eligible, "Stopped from the admin.")
        changed, skipped = result.changed, result.skipped
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
        if request.method == "POST" and request.POST.get("post") == "yes":
            result = actions.rerun(queryset)
            _log_all(
                self,
                request,
                result.analyses,
                "Re-run from the admin: scores and incidents deleted.",
            )
            self.message_user(
                request,
                f"Re-queued {_count(len(result.analyses))}; deleted "
                f"{_count(result.scores_deleted, 'score', 'scores')} and "
                f"{_count(result.incidents_deleted, 'incident', 'incidents')}.",
                messages.SUCCESS,
            )
            return None  # back to the changelist, like delete_selected

        analyses = list(queryset.select_related("camera").order_by("pk"))
        ids = [a.pk for a in analyses]
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
class IncidentAdmin(ScopedToVisibleCameras, ChangedFieldsOnly):
    camera_path = "analysis__camera"
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
        "feedback",
    )
    list_filter = (AcknowledgedFilter, "feedback", "analysis__camera")
    list_select_related = ("analysis__camera", "acknowledged_by")
    search_fields = ("analysis__name", "analysis__camera__name", "note")
    autocomplete_fields = ("analysis",)
    actions = ("acknowledge", "false_alarm", "confirm")
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
        (
            "Feedback",
            {
                "fields": ("feedback", "feedback_by", "feedback_at"),
                "description": "Given with the False alarm and Confirm buttons (the analysis "
                "page or the actions of the list): the incident's frames become normal or "
                "anomaly examples of its camera.",
            },
        ),
    )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets  # a hand-made incident may get an image uploaded
        # Shown read-only, the file field would link to its MEDIA_URL, which nothing serves
        # (every file goes through an access-checked view): the preview links to that view.
        return [
            (name, {**opts, "fields": [f for f in opts["fields"] if f != "thumbnail"]})
            for name, opts in fieldsets
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Incidents are the worker's record: once one exists only the note is editable.
        # On the add page (an incident recorded by hand) the facts are still open.
        if obj is None:
            return [
                "thumbnail_preview",
                "acknowledged_by",
                "acknowledged_at",
                "feedback",
                "feedback_by",
                "feedback_at",
            ]
        fields = [f.name for f in Incident._meta.fields if f.name not in ("id", "note")]
        return [*fields, "thumbnail_preview"]

    @admin.display(description="Open", boolean=True)
    def is_open(self, obj: Incident) -> bool:
        return obj.is_open

    @admin.display(description="Preview")
    def thumbnail_preview(self, obj: Incident) -> str:
        url = obj.thumbnail_url  # the access-checked view: MEDIA_URL is not served
        if not url:
            return "-"
        return format_html(
            '<a href="{0}" target="_blank" rel="noopener">'
            '<img src="{0}" alt="Thumbnail of incident {1}" style="max-width: 320px; '
            'height: auto;"></a>',
            url,
            obj.pk,
        )

    @admin.action(description="Acknowledge selected incidents", permissions=["change"])
    def acknowledge(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        result = actions.acknowledge(queryset, request.user)
        _log_all(self, request, result.pending, "Acknowledged.")
        changed, skipped = result.changed, result.skipped
        self.message_user(
            request, f"Acknowledged {_count(changed, 'incident', 'incidents')}.", messages.SUCCESS
        )
        if skipped:
            self.message_user(
                request,
                f"Skipped {_count(skipped, 'incident', 'incidents')} already acknowledged.",
                messages.WARNING,
            )

    def _feedback(self, request: HttpRequest, queryset: QuerySet[Incident], kind: str) -> None:
        changed = examples = 0
        for incident in queryset.select_related("analysis"):
            result = actions.feedback(incident, kind, request.user)
            if result.changed:
                changed += 1
                examples += result.exemplars
                self.log_change(request, incident, f"Feedback: {result.incident.feedback}.")
        label = Incident.Feedback(kind).label.lower()
        self.message_user(
            request,
            f"Marked {_count(changed, 'incident', 'incidents')} “{label}”; "
            f"{_count(examples, 'example', 'examples')} recorded from their frames.",
            messages.SUCCESS,
        )

    @admin.action(description="Mark selected incidents as false alarms", permissions=["change"])
    def false_alarm(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        self._feedback(request, queryset, Incident.Feedback.FALSE_ALARM)

    @admin.action(description="Confirm selected incidents as anomalies", permissions=["change"])
    def confirm(self, request: HttpRequest, queryset: QuerySet[Incident]) -> None:
        self._feedback(request, queryset, Incident.Feedback.CONFIRMED)


class ExemplarAdminForm(forms.ModelForm):
    """An example added by hand, for a camera or for one analysis: one image, or one short
    clip whose frames (sampled as on the analysis page) become one example each."""

    clip = clip_field()
    # The upload cap of the request (ExemplarAdmin puts it in front of the add view).
    upload_cap: upload_handlers.CappedUploadHandler | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "image" in self.fields:  # adding: an image or a clip (the form says which)
            self.fields["image"].required = False
        self.clip_ext: str | None = None
        self.clip_frames: list[bytes] = []  # the clip's sampled frames, as JPEGs, once valid

    @property
    def oversized(self) -> set[str]:
        return self.upload_cap.oversized if self.upload_cap is not None else set()

    def clean_image(self) -> Any:
        if "image" in self.oversized:
            raise _size_error(settings.DETECTION_MAX_UPLOAD_MB, "DETECTION_MAX_UPLOAD_MB")
        image = self.cleaned_data.get("image")
        if image is None or not hasattr(image, "read") or isinstance(image, ContentFile):
            return image
        # Stored re-encoded as a JPEG under a generated name, as the portal stores them.
        try:
            data = image_file_to_jpeg(image)
        except MediaError as exc:
            reason = str(exc).removeprefix("image bytes: ")
            raise ValidationError(
                "%(name)s: %(reason)s",
                code="bad_file",
                params={"name": image.name, "reason": reason},
            ) from None
        return ContentFile(data, name=f"{uuid.uuid4().hex}.jpg")

    def clean_clip(self) -> Any:
        clip = self.cleaned_data.get("clip")
        self.clip_ext = check_clip(clip, oversized="clip" in self.oversized)
        return clip

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "camera" in self.fields and "analysis" in self.fields:
            camera, analysis = data.get("camera"), data.get("analysis")
            if camera is None and analysis is None and not self.has_error("camera"):
                self.add_error("camera", "Choose a camera (every analysis of it) or one analysis.")
            elif camera is not None and analysis is not None:
                self.add_error("analysis", "Choose a camera or one analysis, not both.")
        if "image" in self.fields and not self.has_error("image") and not self.has_error("clip"):
            image, clip = data.get("image"), data.get("clip")
            if image and clip:
                self.add_error("clip", "Give an image or a clip, not both.")
            elif not image and not clip:
                self.add_error("image", "Choose an image, or a clip.")
            elif clip and not self.errors:
                # Last, and only when all else is valid: sampling reads the whole clip.
                try:
                    self.clip_frames = clip_jpegs(clip, self.clip_ext or "")
                except ValidationError as exc:
                    self.add_error("clip", exc)
        return data


@admin.register(Exemplar)
class ExemplarAdmin(ScopedToVisibleCameras, ChangedFieldsOnly):
    """Examples of a camera's normal (or of anomalies): uploaded, from clips, from feedback.

    The worker embeds them (the web never loads the model); `model_spec` says which model
    did. Once saved an example is read-only: a new image or kind is a new example (the
    worker notices added and removed examples, not edited ones).
    """

    form = ExemplarAdminForm
    list_display = (
        "preview_small",
        "kind",
        "source",
        "applies_to",
        "incident",
        "created_by",
        "created_at",
        "embedded",
    )
    list_display_links = ("preview_small", "kind")
    list_filter = ("kind", "source")
    list_select_related = ("camera", "analysis__camera", "created_by")
    search_fields = ("camera__name", "analysis__name", "analysis__camera__name")
    autocomplete_fields = ("camera", "analysis")
    ADD_FIELDS = ("kind", "camera", "analysis", "image", "clip")
    CHANGE_FIELDS = (
        "preview",
        "kind",
        "camera",
        "analysis",
        "source",
        "incident",
        "frame_index",
        "created_by",
        "created_at",
        "model_spec",
    )

    def scope(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # A camera's examples, or one of its analyses': the visibility rule of either.
        if request.user.is_superuser:
            return queryset
        cameras = visible_cameras(request.user).values("pk")
        return queryset.filter(Q(camera__in=cameras) | Q(analysis__camera__in=cameras))

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return self.ADD_FIELDS if obj is None else self.CHANGE_FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if obj is None else self.CHANGE_FIELDS

    def get_urls(self) -> list[Any]:
        # The add view takes uploads: its size cap must be in place before anything reads
        # the body (the CSRF check included, which then runs inside), as on the analysis page.
        name = f"{self.opts.app_label}_{self.opts.model_name}_add"
        return [
            URLPattern(url.pattern, self._capped(url.callback), url.default_args, url.name)
            if isinstance(url, URLPattern) and url.name == name
            else url
            for url in super().get_urls()
        ]

    @staticmethod
    def _capped(view: Any) -> Any:
        def capped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method == "POST":
                max_bytes = settings.DETECTION_MAX_UPLOAD_MB * upload_handlers.MIB
                request.exemplar_upload_cap = upload_handlers.install(request, max_bytes)
            return view(request, *args, **kwargs)  # admin_view: the CSRF check, then access

        capped.csrf_exempt = True  # type: ignore[attr-defined]
        return capped

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change, **kwargs)
        cap = getattr(request, "exemplar_upload_cap", None)
        if cap is None:
            return form
        return type(form.__name__, (form,), {"upload_cap": cap})

    def save_model(self, request: HttpRequest, obj: Exemplar, form: Any, change: bool) -> None:
        if not change and getattr(form, "clip_frames", None):
            # A clip: one example per sampled frame, as the analysis page adds them.
            obj.clip_added = actions.add_exemplars(
                form.clip_frames,
                kind=obj.kind,
                source=Exemplar.Source.CLIP,
                user=request.user,
                camera=obj.camera,
                analysis=obj.analysis,
            )
            obj.clip_name = file_label(form.cleaned_data["clip"].name)
            return
        if not change:
            obj.created_by = request.user
            obj.source = Exemplar.Source.UPLOAD
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if not hasattr(form.instance, "clip_added"):  # the clip's examples are all saved
            super().save_related(request, form, formsets, change)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        added = getattr(obj, "clip_added", None)
        if added is None:
            return super().log_addition(request, obj, message)
        for exemplar in added:
            super().log_addition(request, exemplar, f"Added from the clip {obj.clip_name}.")
        return None

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None):
        added = getattr(obj, "clip_added", None)
        if added is None:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(
            request,
            f"{_count(len(added), 'example', 'examples')} added from {obj.clip_name}",
            messages.SUCCESS,
        )
        return self.response_post_save_add(request, obj)  # the changelist

    def delete_model(self, request: HttpRequest, obj: Exemplar) -> None:
        actions.delete_exemplars(Exemplar.objects.filter(pk=obj.pk))  # and its file

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Exemplar]) -> None:
        actions.delete_exemplars(queryset)

    @admin.display(description="Applies to")
    def applies_to(self, obj: Exemplar) -> str:
        if obj.camera_id:
            return f"camera {obj.camera}"
        return f"analysis {obj.analysis}"

    @admin.display(description="Embedded", boolean=True)
    def embedded(self, obj: Exemplar) -> bool:
        return bool(obj.model_spec)

    def _image(self, obj: Exemplar, width: int) -> str:
        if obj.pk is None or not obj.image:
            return "-"
        url = reverse("detection:exemplar_image", args=[obj.pk])  # access-checked
        return format_html(
            '<a href="{0}" target="_blank" rel="noopener"><img src="{0}" alt="Example {1}" '
            'style="max-width: {2}px; height: auto;"></a>',
            url,
            obj.pk,
            width,
        )

    @admin.display(description="Image")
    def preview(self, obj: Exemplar) -> str:
        return self._image(obj, 320)

    @admin.display(description="Image")
    def preview_small(self, obj: Exemplar) -> str:
        return self._image(obj, 96)


# --- Notifications (issue 15) ---------------------------------------------------------


@admin.register(IncidentSubscription)
class IncidentSubscriptionAdmin(ScopedToVisibleCameras):
    """Who gets e-mail about which camera. A subscription to a camera its user may not see
    sends nothing (detection.worker.notifications checks access when mailing)."""

    camera_path = "camera"
    list_display = ("user", "camera", "email", "created_at")
    list_filter = ("email", "camera")
    search_fields = ("user__username", "user__email", "camera__name")
    autocomplete_fields = ("user", "camera")
    list_select_related = ("user", "camera")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ScopedToVisibleCameras):
    """The webhook log, read-only: the worker writes it and retries from it."""

    camera_path = "analysis__camera"
    list_display = (
        "created_at",
        "analysis",
        "event",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "event")
    search_fields = ("analysis__name",)
    list_select_related = ("analysis", "analysis__camera")
    date_hierarchy = "created_at"
    fields = (
        "analysis",
        "incident",
        "event",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
        "created_at",
        "payload_pretty",
    )
    readonly_fields = fields

    @admin.display(description="Payload")
    def payload_pretty(self, obj: WebhookDelivery) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, sort_keys=True))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
