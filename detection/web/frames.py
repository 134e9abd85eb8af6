"""Pictures for exploring an analysis: any scored frame, and the live camera picture.

- `/analyses/<id>/frames/<frame index>.jpg`: the frame behind a point of the chart. File
  analyses decode it from the source video on demand (detection.engine.stills.frame_at:
  one seek, one frame, at most 640 px wide, nothing cached on the server); live cameras
  show what the worker kept (the ring of recent scored frames, then the incidents' frames
  and thumbnails), or say the frame is no longer kept.
- `/analyses/<id>/picture.jpg`: the live camera a few times a second while a page shows it
  (detection.worker.preview writes it; this view marks the analysis as watched).

Both apply the visibility rule first (a hidden analysis is a 404). Errors are short plain
text a page shows as it is: never a path on the server, never a traceback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_safe

from cameras import validators
from cameras.models import Camera
from detection.access import visible_analyses
from detection.engine.errors import MediaError
from detection.engine.stills import frame_at, jpeg
from detection.frames import frame_ring_dir, live_picture_path, watch_marker_path
from detection.models import Analysis, FrameScore
from detection.worker import preview

# A picture older than this is not "live" any more (the camera stalled, or nobody watched).
PICTURE_FRESH_S = 3.0
# The watch marker is touched at most this often, however many pages poll.
MARK_EVERY_S = 1.0
NOT_KEPT = (
    "This frame is no longer kept: live cameras keep their last "
    f"{int(preview.RING_SECONDS // 60)} minutes of scored frames and the frames of incidents."
)
SOURCE_GONE = (
    "The source video of this analysis is gone (moved or deleted): its frames cannot be "
    "shown. The scores and the exports remain."
)


def _text(message: str, status: int) -> HttpResponse:
    response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


def _jpeg_file(path: Path, cache_control: str) -> FileResponse | None:
    try:
        handle = path.open("rb")
    except (FileNotFoundError, IsADirectoryError):
        return None
    response = FileResponse(handle, content_type="image/jpeg")
    response["Cache-Control"] = cache_control
    return response


@login_required
@require_safe
def scored_frame(request: HttpRequest, pk: int, frame_index: int) -> HttpResponse:
    """The frame a stored score was computed on, with its localisation box."""
    analysis = get_object_or_404(visible_analyses(request.user).select_related("camera"), pk=pk)
    score = FrameScore.objects.filter(analysis=analysis, frame_index=frame_index).first()
    if score is None:
        return _text(f"No score is stored for frame {frame_index}.", 404)
    if analysis.camera.kind == Camera.Kind.FILE:
        return _decoded(analysis, score)
    return _kept(analysis, frame_index)


def _decoded(analysis: Analysis, score: FrameScore) -> HttpResponse:
    try:
        path = validators.video_path(analysis.camera.source)
    except ValidationError:
        return _text(SOURCE_GONE, 410)
    try:
        image = frame_at(path, score.frame_index)
    except MediaError:
        return _text(f"Frame {score.frame_index} cannot be decoded from the source video.", 422)
    if score.box is not None:
        x0, y0, x1, y1 = score.box
        thickness = max(2, image.shape[1] // 200)
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), thickness)
    data = jpeg(image)
    if not data:
        return _text(f"Frame {score.frame_index} cannot be encoded.", 422)
    response = HttpResponse(data, content_type="image/jpeg")
    # The same frame of the same file every time (until a re-run): the browser may keep it.
    response["Cache-Control"] = "private, max-age=300"
    return response


def _kept(analysis: Analysis, frame_index: int) -> HttpResponse:
    ring = _jpeg_file(frame_ring_dir(analysis.pk) / f"{int(frame_index)}.jpg", "private, no-cache")
    if ring is not None:
        return ring
    # Older frames survive where an incident kept them: its frames around the peak, its peak.
    suffix = f"/{int(frame_index)}.jpg"
    incidents = analysis.incidents.order_by("-pk")
    for thumbnail, frames, peak in incidents.values_list("thumbnail", "frames", "peak_frame_index"):
        names = [n for n in frames or () if isinstance(n, str) and n.endswith(suffix)]
        if peak == frame_index and thumbnail:
            names.append(thumbnail)
        for name in names:
            try:
                handle = default_storage.open(name, "rb")
            except (FileNotFoundError, OSError):
                continue
            response = FileResponse(handle, content_type="image/jpeg")
            response["Cache-Control"] = "private, no-cache"
            return response
    return _text(NOT_KEPT, 404)


@login_required
@require_safe
def live_picture(request: HttpRequest, pk: int) -> HttpResponse:
    """The live camera picture; asking for it is what keeps the worker writing it."""
    analysis = get_object_or_404(visible_analyses(request.user).select_related("camera"), pk=pk)
    if not analysis.camera.is_live:
        return _text("Only live cameras have a live picture.", 404)
    _mark_watched(analysis.pk)
    path = live_picture_path(analysis.pk)
    try:
        fresh = time.time() - path.stat().st_mtime < PICTURE_FRESH_S
    except OSError:
        fresh = False
    response = _jpeg_file(path, "no-store") if fresh else None
    if response is None:
        # The worker starts within a second of the first request; a camera without frames
        # never gets a picture. Pages keep asking, slowly, and show this meanwhile.
        response = _text("No live picture: the camera is not streaming (yet).", 404)
        response["Retry-After"] = "1"
    return response


def _mark_watched(analysis_id: int) -> None:
    marker = watch_marker_path(analysis_id)
    try:
        if time.time() - marker.stat().st_mtime < MARK_EVERY_S:
            return
        os.utime(marker)
    except FileNotFoundError:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
