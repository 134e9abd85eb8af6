"""The analysis page, its latest-frame image, and the operators' buttons.

Every view starts from `visible_analyses` / `visible_incidents`: hidden and missing objects
answer the same 404, so nobody can probe for ids.
"""

from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from cameras.models import Camera
from detection import actions
from detection.access import visible_analyses, visible_incidents
from detection.engine.prompt_help import sound_warnings
from detection.frames import INCIDENT_CLIP_TYPE, incident_clip_path, latest_frame_path
from detection.live.messages import incident_message
from detection.models import Analysis, Exemplar, FrameScore, Incident
from detection.web.exemplars import ExemplarForm
from detection.web.incidents import back_to
from detection.web.metadata import metadata_rows
from detection.web.ranges import ranged_file
from detection.web.series import display_series
from detection.web.storage import private_jpeg

SCORES_PER_PAGE = 100
# A live camera collects incidents for months; the page shows the newest, the admin all.
INCIDENTS_SHOWN = 100
# The worker notes a live camera's last frame every 5 s while it scores.
CAMERA_FRESH_S = 15.0
INCIDENTS_SHADED = 2000  # ranges drawn on the chart (a file's, or a camera's)
EXEMPLARS_SHOWN = 60
CHANGE_PERMISSION = "detection.change_analysis"


def _streaming(camera: Camera) -> bool:
    """Online with a frame lately: what the page's "Camera streaming" indicator starts from
    (decided here, on the server's clock; the page then goes by the frames it receives)."""
    if camera.status != Camera.Status.ONLINE or camera.last_frame_at is None:
        return False
    return (timezone.now() - camera.last_frame_at).total_seconds() < CAMERA_FRESH_S


def _incident_ranges(analysis: Analysis) -> list[dict[str, object]]:
    """What the chart shades: each incident's range (an open one runs to the newest point)."""
    rows = analysis.incidents.order_by("start_time_s", "id").values_list(
        "id", "start_time_s", "end_time_s"
    )[:INCIDENTS_SHADED]
    return [{"id": i, "start_time_s": s, "end_time_s": e, "open": e is None} for i, s, e in rows]


def threshold_text(analysis: Analysis) -> str:
    """The threshold in use: the fixed one, or the automatic one once the worker derived it."""
    if not analysis.auto_threshold:
        return format(analysis.threshold, "g")
    used = (analysis.metadata or {}).get("anomaly_threshold")
    if isinstance(used, (int, float)) and not isinstance(used, bool) and math.isfinite(used):
        return f"automatic: {format(used, '.3g')}"
    return "automatic: derived after learning"


def learning_state(analysis: Analysis) -> dict[str, float] | None:
    """{"start", "elapsed", "of"} seconds while the newest stored frame is still being
    learned as normal; None otherwise. `start` is the time of the first stored frame."""
    if analysis.learning_seconds <= 0:
        return None
    scores = FrameScore.objects.filter(analysis=analysis)
    latest = scores.order_by("-frame_index").values_list("learning", "time_s").first()
    if latest is None or not latest[0]:
        return None
    start = scores.order_by("frame_index").values_list("time_s", flat=True).first()
    elapsed = max(0.0, latest[1] - (start or 0.0))
    return {"start": start or 0.0, "elapsed": elapsed, "of": analysis.learning_seconds}


def _exemplars(analysis: Analysis) -> dict[str, object]:
    applying = actions.exemplars_for(analysis)
    counts = dict(applying.order_by().values_list("kind").annotate(n=Count("pk")))
    return {
        "exemplars": list(applying.select_related("created_by")[:EXEMPLARS_SHOWN]),
        "exemplar_counts": {
            "normal": counts.get(Exemplar.Kind.NORMAL, 0),
            "anomaly": counts.get(Exemplar.Kind.ANOMALY, 0),
        },
        "exemplar_form": ExemplarForm(),
    }


def is_live_view(analysis: Analysis) -> bool:
    """Live cameras and file analyses still in progress get the websocket view."""
    return analysis.camera.is_live or analysis.status in actions.STOPPABLE


@login_required
def analysis_detail(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = get_object_or_404(visible_analyses(request.user).select_related("camera"), pk=pk)
    scores = FrameScore.objects.filter(analysis=analysis).order_by("frame_index")
    # get_page() turns junk or out-of-range ?page= into the first or last page, not a 500.
    page = Paginator(scores, SCORES_PER_PAGE).get_page(request.GET.get("page"))
    live = is_live_view(analysis)
    incidents = analysis.incidents.select_related("acknowledged_by", "feedback_by")
    # Live: newest first, like the socket's list; results: in the order they happened.
    incidents = incidents.order_by(*(("-started_at", "-id") if live else ("start_time_s", "id")))
    incident_list = list(incidents[:INCIDENTS_SHOWN])
    normal_prompts, anomaly_prompts = (
        analysis.prompt_list("normal"),
        analysis.prompt_list("anomaly"),
    )
    frame_url = ""
    if latest_frame_path(analysis.pk).exists():
        version = analysis.last_frame_index if analysis.last_frame_index is not None else 0
        frame_url = f"{reverse('detection:frame', args=[analysis.pk])}?v={version}"
    camera = analysis.camera
    return render(
        request,
        "analysis.html",
        {
            "analysis": analysis,
            "camera": analysis.camera,
            "normal_prompts": normal_prompts,
            "anomaly_prompts": anomaly_prompts,
            "prompt_warnings": sound_warnings(normal_prompts, anomaly_prompts),
            "metadata": metadata_rows(analysis.metadata),
            "phase": (analysis.metadata or {}).get("phase") or "",
            # Results pages shade them from here; live pages from the socket's incidents.
            "incident_ranges": None if live else _incident_ranges(analysis),
            # Any scored frame (frame 0 here; pages put the index in) and the live picture.
            "scored_frame_url": reverse("detection:scored_frame", args=[analysis.pk, 0]),
            "picture_url": reverse("detection:live_picture", args=[analysis.pk])
            if camera.is_live
            else "",
            "camera_streaming": _streaming(camera),
            "incidents": incident_list,
            "incidents_total": incidents.count()
            if len(incident_list) == INCIDENTS_SHOWN
            else len(incident_list),
            "page": page,
            "live": live,
            "series": None if live else display_series(analysis),
            "ws_path": f"/ws/analyses/{analysis.pk}/",
            "frame_url": frame_url,
            "can_change": request.user.has_perm(CHANGE_PERMISSION),
            "can_queue": analysis.status in actions.QUEUEABLE,
            "can_stop": analysis.status in actions.STOPPABLE,
            "threshold_text": threshold_text(analysis),
            "threshold_in_use": analysis.threshold_in_use,
            "learning": learning_state(analysis),
            **_exemplars(analysis),
        },
    )


@login_required
@require_safe
def latest_frame(request: HttpRequest, pk: int) -> FileResponse:
    """The worker's latest scored frame (with the localisation box), never cached."""
    analysis = get_object_or_404(visible_analyses(request.user), pk=pk)
    try:
        # The worker replaces the file atomically, so an open handle reads one whole JPEG.
        handle = latest_frame_path(analysis.pk).open("rb")
    except FileNotFoundError:
        raise Http404("No frame scored yet.") from None
    response = FileResponse(handle, content_type="image/jpeg")
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_safe
def incident_thumbnail(request: HttpRequest, pk: int) -> FileResponse:
    """An incident's peak frame (with its box), for those who may see the incident.

    Uploads and thumbnails live under MEDIA_ROOT, which is never served as a directory:
    every file a page shows goes through a view that applies the access rule.
    """
    incident = get_object_or_404(visible_incidents(request.user), pk=pk)
    # Private: it passed an access check. The URL carries a version (`?v=`), but the file
    # of an open incident is replaced in place, so browsers revalidate rather than trust it.
    return private_jpeg(incident.thumbnail, "incident", "private, no-cache")


@login_required
@require_safe
def incident_clip(request: HttpRequest, pk: int) -> HttpResponse:
    """An incident's short clip (MP4), for those who may see the incident; with Range
    support, so the browser's player can seek (detection.web.ranges)."""
    incident = get_object_or_404(visible_incidents(request.user), pk=pk)
    path = incident_clip_path(incident.pk)
    return ranged_file(request, path, INCIDENT_CLIP_TYPE, "This incident has no clip (yet).")


def _wants_json(request: HttpRequest) -> bool:
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


@login_required
@require_POST
def acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    incident = get_object_or_404(visible_incidents(request.user).select_related("analysis"), pk=pk)
    result = actions.acknowledge(Incident.objects.filter(pk=incident.pk), request.user)
    incident = Incident.objects.select_related("acknowledged_by", "analysis").get(pk=incident.pk)
    if _wants_json(request):
        return JsonResponse(
            {
                "ok": True,
                "changed": bool(result.changed),
                "incident": incident_message(incident),
            }
        )
    if result.changed:
        messages.success(request, "Incident acknowledged.")
    else:
        who = incident.acknowledged_by.get_username() if incident.acknowledged_by else "someone"
        messages.info(request, f"The incident was already acknowledged by {who}.")
    return back_to(request, incident.analysis)  # or the incidents page it came from


FEEDBACK_DONE = {
    Incident.Feedback.FALSE_ALARM: "Marked as a false alarm: its frames now teach the camera "
    "what is normal.",
    Incident.Feedback.CONFIRMED: "Confirmed: its frames are now examples of an anomaly.",
}
NO_FRAME = " No frame of this incident was available to learn from."


def _feedback(request: HttpRequest, pk: int, kind: str) -> HttpResponse:
    """Like acknowledging: any viewer of the camera may say what an incident was."""
    incident = get_object_or_404(visible_incidents(request.user).select_related("analysis"), pk=pk)
    result = actions.feedback(incident, kind, request.user)
    incident = result.incident
    if result.changed:
        text = FEEDBACK_DONE[kind] + (NO_FRAME if result.no_frame else "")
    else:
        text = f"The incident was already marked “{incident.get_feedback_display()}”."
    if _wants_json(request):
        return JsonResponse(
            {
                "ok": True,
                "changed": result.changed,
                "exemplars": result.exemplars,
                "message": text,
                "incident": incident_message(incident),
            }
        )
    if result.changed:
        (messages.warning if result.no_frame else messages.success)(request, text)
    else:
        messages.info(request, text)
    return back_to(request, incident.analysis)  # or the incidents page it came from


@login_required
@require_POST
def false_alarm(request: HttpRequest, pk: int) -> HttpResponse:
    return _feedback(request, pk, Incident.Feedback.FALSE_ALARM)


@login_required
@require_POST
def confirm(request: HttpRequest, pk: int) -> HttpResponse:
    return _feedback(request, pk, Incident.Feedback.CONFIRMED)


def _changeable(request: HttpRequest, pk: int) -> Analysis:
    # Visibility first: a hidden analysis is a 404 for everyone, permitted or not.
    analysis = get_object_or_404(visible_analyses(request.user), pk=pk)
    if not request.user.has_perm(CHANGE_PERMISSION):
        raise PermissionDenied
    return analysis


def _report(request: HttpRequest, result: actions.Transition, done: str, skipped: str) -> None:
    if result.changed:
        messages.success(request, done)
    else:
        messages.warning(request, skipped)


@login_required
@require_POST
def queue_analysis(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = _changeable(request, pk)
    result = actions.queue(Analysis.objects.filter(pk=analysis.pk))
    _report(
        request,
        result,
        "Queued: a worker will pick it up shortly.",
        "Not queued: it is already queued or running.",
    )
    return redirect(analysis)


@login_required
@require_POST
def stop_analysis(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = _changeable(request, pk)
    result = actions.stop(Analysis.objects.filter(pk=analysis.pk))
    _report(request, result, "Stopped.", "Not stopped: it was neither queued nor running.")
    return redirect(analysis)


@login_required
@require_POST
def rerun_analysis(request: HttpRequest, pk: int) -> HttpResponse:
    analysis = _changeable(request, pk)
    result = actions.rerun(Analysis.objects.filter(pk=analysis.pk))
    messages.success(
        request,
        f"Re-queued; deleted {actions.count(result.scores_deleted, 'score', 'scores')} and "
        f"{actions.count(result.incidents_deleted, 'incident', 'incidents')}.",
    )
    return redirect(analysis)
