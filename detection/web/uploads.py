"""The upload pages: queue an uploaded video for analysis; score one image on the spot.

Both views change the request's upload handlers (a size cap that acts while the body
streams in), which must happen before anything reads request.POST. CsrfViewMiddleware reads
it in process_view, so, as Django's docs prescribe, the outer view is csrf_exempt and the
inner one csrf_protect: the CSRF check still runs, after the handlers are in place.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from cameras.models import Camera
from detection.engine.errors import MediaError
from detection.engine.limits import split_prompts
from detection.engine.media import declared_shortfall
from detection.engine.video import VideoReader
from detection.models import Analysis
from detection.web import kept_images, storage, upload_handlers
from detection.web.forms import (
    IMAGE_MAX_MB,
    ImageTestForm,
    VideoUploadForm,
    strip_prefix,
)

log = logging.getLogger(__name__)

PREVIEW_MAX_WIDTH = 480
# How long this session's last image took to score: the busy line's expected wait.
LAST_SECONDS_KEY = "detection.image_seconds"


# --- /upload/ -------------------------------------------------------------------------


@login_required
@csrf_exempt
def upload_video(request: HttpRequest) -> HttpResponse:
    cap = None
    if request.method == "POST":
        max_mb = settings.DETECTION_MAX_UPLOAD_MB
        cap = upload_handlers.install(request, max_mb * upload_handlers.MIB)
    return _upload_video(request, cap)


@csrf_protect
def _upload_video(
    request: HttpRequest, cap: upload_handlers.CappedUploadHandler | None
) -> HttpResponse:
    max_mb = settings.DETECTION_MAX_UPLOAD_MB
    if request.method != "POST":
        form = VideoUploadForm(max_mb=max_mb)
        return _render_upload(request, form)

    form = VideoUploadForm(
        request.POST,
        request.FILES,
        max_mb=max_mb,
        oversized=cap is not None and "video" in cap.oversized,
    )
    if not form.is_valid():
        return _render_upload(request, form)

    video = form.cleaned_data["video"]
    ext = form.video_ext or ""  # checked by clean_video; store_upload refuses anything else
    path: Path | None = None
    try:
        path = storage.store_upload(video, ext)
        video.close()  # a temporary upload file goes now, not at the end of the request
        _check_video(path)
        analysis = _create_analysis(request, form.cleaned_data, path, video)
    except ValidationError as exc:
        storage.discard(path)
        # The content check's reason, or (should MEDIA_ROOT be misconfigured) the models'.
        form.add_error("video", exc.messages)
        return _render_upload(request, form)
    except BaseException:
        # Nothing is kept from a failed upload: no file, and the transaction rolled back.
        storage.discard(path)
        raise
    log.info(
        "user %s uploaded %s as %s (analysis %s)",
        request.user.pk,
        video.name,
        path.name,
        analysis.pk,
    )
    return redirect(analysis)


def _check_video(path: Path) -> None:
    """Refuse what FFmpeg cannot open or decode a frame of; the engine's reasons, no paths.

    Also refuse a file shorter than its container declares: an upload cut off in transfer
    (a fast-start MP4 would otherwise open, decode its first seconds and be analysed as if
    it were the whole video).
    """
    shortfall = declared_shortfall(path)
    if shortfall:
        raise ValidationError("%(reason)s", code="truncated", params={"reason": shortfall})
    try:
        with VideoReader(path) as reader:
            # The first sample is frame 0: opening is not enough, one frame must decode.
            next(reader.frames(1.0, skip_black=False))
    except MediaError as exc:
        raise ValidationError(strip_prefix(str(exc), str(path)), code="unreadable") from None
    except cv2.error as exc:
        raise ValidationError(
            "OpenCV could not decode the video (%(reason)s)",
            code="unreadable",
            params={"reason": exc.msg or exc},
        ) from None


def _create_analysis(
    request: HttpRequest, data: dict[str, Any], path: Path, video: Any
) -> Analysis:
    with transaction.atomic():
        camera = Camera(
            name=data["name"],
            kind=Camera.Kind.FILE,
            source=str(path),
            description="Uploaded video.",
            created_by=request.user,
        )
        camera.full_clean()
        camera.save()
        camera.viewers.add(request.user)
        analysis = Analysis(
            camera=camera,
            name=data["name"],
            normal_prompts=data["normal_prompts"],
            anomaly_prompts=data["anomaly_prompts"],
            threshold=data["threshold"],
            sampling_fps=data["sampling_fps"],
            mode=data["mode"],
            learning_seconds=data["learning_seconds"],
            auto_threshold=data["auto_threshold"],
            status=Analysis.Status.QUEUED,
            created_by=request.user,
            metadata={"uploaded_filename": video.name, "uploaded_bytes": video.size},
        )
        analysis.full_clean()
        analysis.save()
    return analysis


def _render_upload(request: HttpRequest, form: VideoUploadForm) -> HttpResponse:
    return render(request, "upload.html", {"form": form, "max_mb": form.max_mb})


# --- /image/ --------------------------------------------------------------------------


@login_required
@csrf_exempt
def analyze_image_page(request: HttpRequest) -> HttpResponse:
    cap = None
    if request.method == "POST":
        # In memory while the request is read (never a temporary file); a valid image is
        # then kept for this session (kept_images.py) so new prompts can score it again.
        cap = upload_handlers.install(request, IMAGE_MAX_MB * upload_handlers.MIB, in_memory=True)
    return _analyze_image_page(request, cap)


@csrf_protect
def _analyze_image_page(
    request: HttpRequest, cap: upload_handlers.CappedUploadHandler | None
) -> HttpResponse:
    result = preview = kept = None
    if request.method != "POST":
        form = ImageTestForm()
        kept = kept_images.current(request.session)  # a page opened afresh scores it too
    else:
        files = request.FILES  # parsed now: the cap knows what it skipped only after this
        oversized = cap is not None and "image" in cap.oversized
        kept_data = kept_error = None
        token = request.POST.get("kept", "")
        if token and not oversized and not files.get("image"):
            try:
                kept_data, kept = kept_images.read(request.session, token)
            except kept_images.KeptImageError as exc:
                kept_error = str(exc)
        form = ImageTestForm(
            request.POST, files, oversized=oversized, kept=kept_data, kept_error=kept_error
        )
        valid = form.is_valid()
        if form.uploaded is not None and form.frame is not None:
            # Kept even when a prompt was wrong: the fixed form needs no file again.
            upload = form.cleaned_data["image"]
            height, width = form.frame.shape[:2]
            kept = kept_images.keep(request.session, form.uploaded, upload.name, width, height)
        if kept is None:
            # A refused new file, or a page whose own image is gone: offer what is kept.
            kept = kept_images.current(request.session)
        if valid:
            result, seconds = _score(form)
            if result["status"] != "Success":
                form.add_error(None, result["error_message"])
                result = None
            else:
                request.session[LAST_SECONDS_KEY] = round(seconds, 1)
                preview = preview_data_url(form.frame, result.get("box"))
    return render(
        request,
        "image.html",
        {
            "form": form,
            "result": result,
            "preview": preview,
            "kept": kept,
            "max_mb": IMAGE_MAX_MB,
            "last_seconds": request.session.get(LAST_SECONDS_KEY),
        },
    )


def _score(form: ImageTestForm) -> tuple[dict[str, Any], float]:
    from detection.api import analyze_image  # loads torch on first use only

    data = form.cleaned_data
    started = time.perf_counter()
    result = analyze_image(
        form.frame,
        split_prompts(data["normal_prompts"]),
        split_prompts(data["anomaly_prompts"]),
        threshold=data["threshold"],
        localize=data["localize"],
    )
    return result, time.perf_counter() - started


def preview_data_url(frame: np.ndarray, box: dict[str, Any] | None = None) -> str:
    """A small JPEG of `frame` (at most PREVIEW_MAX_WIDTH wide) as a data: URL."""
    height, width = frame.shape[:2]
    scale = min(1.0, PREVIEW_MAX_WIDTH / width)
    small = frame
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    if box:
        small = small.copy()
        corner0 = (int(box["x0"] * scale), int(box["y0"] * scale))
        corner1 = (int(box["x1"] * scale) - 1, int(box["y1"] * scale) - 1)
        cv2.rectangle(small, corner0, corner1, (0, 0, 255), 2)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")
