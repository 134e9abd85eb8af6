"""The dashboard as a live camera wall: the cards' data and the status poll's payload.

The page renders one card per visible camera (templates/includes/camera_card.html); the
script polls `state()` every few seconds while the page is visible and keeps sockets open
for queued and running analyses. A card whose `version` changed (an analysis added,
removed or renamed; the camera renamed) is fetched again whole, from the same template, so
the markup lives in one place.

The poll costs a fixed number of queries whatever the number of cameras: the cameras, then
all their analyses (one prefetch), reading only the columns shown.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from django.utils.dateformat import format as date_format
from django.utils.timezone import localtime

from cameras.access import visible_cameras
from cameras.models import Camera, redact_text
from detection.live.messages import frame_url
from detection.models import Analysis

ACTIVE = (Analysis.Status.QUEUED, Analysis.Status.RUNNING)
# How often the page asks (seconds); the sockets of active analyses carry the rest live.
POLL_SECONDS = 3.0

CAMERA_FIELDS = (
    "id",
    "name",
    "kind",
    "source",
    "enabled",
    "status",
    "last_frame_at",
    "last_error",
)
ANALYSIS_FIELDS = (
    "id",
    "camera_id",
    "name",
    "status",
    "threshold",
    "auto_threshold",
    "window_size",
    "progress",
    "error_message",
    "frames_scored",
    "last_frame_index",
    "last_score",
    "metadata",
    "started_at",
    "finished_at",
    "updated_at",
)


def wall_cameras(user: Any) -> QuerySet[Camera]:
    """The cameras `user` may see, each with its analyses: two queries in all."""
    analyses = Analysis.objects.only(*ANALYSIS_FIELDS).order_by("name", "id")
    return (
        visible_cameras(user).only(*CAMERA_FIELDS).prefetch_related(Prefetch("analyses", analyses))
    )


def card_version(camera: Camera) -> str:
    """Changes whenever the card's structure does (not its live values): the page then
    fetches the card again."""
    parts: list[Any] = [camera.name, camera.kind, camera.enabled]
    parts += [(a.pk, a.name, a.window_size) for a in camera.analyses.all()]
    return hashlib.blake2s(repr(parts).encode(), digest_size=6).hexdigest()


def phase(analysis: Analysis) -> str:
    """What a running analysis is doing before it scores ("loading model"), or ""."""
    value = (analysis.metadata or {}).get("phase")
    return value if isinstance(value, str) and analysis.status in ACTIVE else ""


def shown_error(analysis: Analysis, camera: Camera) -> str:
    """A failed analysis's reason, with any credentials of its camera's URL hidden."""
    if analysis.status != Analysis.Status.FAILED or not analysis.error_message:
        return ""
    return redact_text(analysis.error_message, *camera.urls)


def decorate(cameras: Iterable[Camera]) -> list[Camera]:
    """The cameras as the card template reads them: each with `card_version`, each
    analysis with `wall_frame_url` (None before its first scored frame), `wall_phase` and
    `wall_error`."""
    cameras = list(cameras)
    for camera in cameras:
        camera.card_version = card_version(camera)
        for analysis in camera.analyses.all():
            analysis.wall_frame_url = frame_url(analysis.pk, analysis.last_frame_index)
            analysis.wall_phase = phase(analysis)
            analysis.wall_error = shown_error(analysis, camera)
    return cameras


def analysis_state(analysis: Analysis, camera: Camera) -> dict[str, Any]:
    metadata = analysis.metadata or {}
    expected = metadata.get("expected_frames")
    return {
        "id": analysis.pk,
        "status": analysis.status,
        "status_label": analysis.get_status_display(),
        "phase": phase(analysis),
        "progress": analysis.progress,
        "frames_scored": analysis.frames_scored,
        "expected_frames": expected if isinstance(expected, int) else None,
        "last_score": analysis.last_score,
        "last_frame_index": analysis.last_frame_index,
        "frame_url": frame_url(analysis.pk, analysis.last_frame_index),
        "threshold": analysis.threshold_in_use,
        "started_at": analysis.started_at.isoformat() if analysis.started_at else None,
        "error_message": shown_error(analysis, camera),
    }


def camera_state(camera: Camera) -> dict[str, Any]:
    display = camera.display_state
    return {
        "id": camera.pk,
        "version": card_version(camera),
        "card_url": reverse("detection:wall_card", args=[camera.pk]),
        "state": display.key,
        "state_label": display.label,
        "is_live": camera.is_live,
        "streaming": camera.is_streaming,
        "last_frame_at": _when(camera.last_frame_at),
        "error": camera.shown_error,
        "analyses": [analysis_state(a, camera) for a in camera.analyses.all()],
    }


def _when(moment: datetime | None) -> dict[str, str] | None:
    """A time as the card shows it (server time zone, as rendered) and in ISO 8601."""
    if moment is None:
        return None
    return {"iso": moment.isoformat(), "text": date_format(localtime(moment), "Y-m-d H:i:s")}


def state(user: Any) -> dict[str, Any]:
    """What the wall shows, for `user`: every visible camera in page order."""
    return {
        "poll_seconds": POLL_SECONDS,
        "cameras": [camera_state(c) for c in wall_cameras(user)],
    }
