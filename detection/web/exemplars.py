"""Examples of a camera's normal (or of an anomaly): add them, show them, remove them.

Anyone who may see the camera may do all three, as with acknowledging and feedback: an
example is part of watching a camera. Uploads are checked like the upload pages' (a size
cap that acts while the body streams in, the content decides, errors name the file and the
reason) and stored as re-encoded JPEGs under generated names; a clip is sampled at
EXAMPLE_FPS, at most MAX_CLIP_FRAMES frames. The worker embeds new examples while it runs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST, require_safe

from detection import actions
from detection.access import visible_analyses, visible_exemplars
from detection.engine.errors import MediaError
from detection.engine.images import load_image
from detection.engine.video import VIDEO_EXTENSIONS
from detection.models import Analysis, Exemplar
from detection.web import upload_handlers
from detection.web.forms import IMAGE_MAX_MB, _size_error, strip_prefix
from detection.web.storage import private_jpeg, video_extension

log = logging.getLogger(__name__)

EXAMPLE_FPS = 1.0
MAX_CLIP_FRAMES = 120
MAX_IMAGES = 50
# Kept at most this long on their longer side: enough for the model's views of a frame
# (a 2x2 grid of 224-pixel cells and the whole), bounded on disk.
MAX_SIDE = 1920
JPEG_QUALITY = 90
MAX_NAME = 80  # characters of a client's file name quoted in an error


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class NamedFileField(forms.FileField):
    """A file field whose errors name the file ("clip.mp4: The submitted file is empty.")."""

    def clean(self, data: Any, initial: Any = None) -> Any:
        try:
            return super().clean(data, initial)
        except ValidationError as exc:
            name = getattr(data, "name", None)
            if not name:
                raise
            raise ValidationError([_file_error(name, m) for m in exc.messages]) from None


class MultipleFileField(NamedFileField):
    """Several files under one name (Django's documented pattern); cleans to a list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/*"}))
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        items = data if isinstance(data, (list, tuple)) else [data]
        cleaned, errors = [], []
        for item in items:
            if not item:
                continue
            try:
                cleaned.append(super().clean(item, initial))
            except ValidationError as exc:  # e.g. an empty file: named, and the others too
                errors += exc.error_list
        if errors:
            raise ValidationError(errors)
        return cleaned


def clip_field(**kwargs: Any) -> NamedFileField:
    """The form field of one short clip, as the analysis page and the admin take it."""
    kwargs.setdefault("label", "Or a short clip")
    return NamedFileField(
        required=False,
        widget=forms.FileInput(attrs={"accept": ",".join(VIDEO_EXTENSIONS)}),
        help_text=f"{', '.join(VIDEO_EXTENSIONS)}; one frame per second is kept, at most "
        f"{MAX_CLIP_FRAMES}.",
        **kwargs,
    )


class ExemplarForm(forms.Form):
    """Images, or one clip, of what this camera looks like normally (or in an anomaly)."""

    SCOPES = [
        ("camera", "This camera (every analysis of it)"),
        ("analysis", "This analysis only"),
    ]

    kind = forms.ChoiceField(
        choices=Exemplar.Kind.choices,
        initial=Exemplar.Kind.NORMAL,
        widget=forms.RadioSelect,
        help_text="Normal examples join what the camera learned as normal; anomaly examples "
        "are what it should flag.",
    )
    scope = forms.ChoiceField(
        choices=SCOPES, initial="camera", widget=forms.RadioSelect, label="For"
    )
    images = MultipleFileField(
        required=False,
        help_text=f"One or more images, up to {IMAGE_MAX_MB} MB each and {MAX_IMAGES} at once.",
    )
    clip = clip_field()

    def __init__(self, *args: Any, oversized: set[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.oversized = oversized or set()
        self.jpegs: list[bytes] = []  # the images, decoded and re-encoded, once valid
        self.clip_ext: str | None = None

    def clean_images(self) -> list[Any]:
        images = self.cleaned_data.get("images") or []
        if "images" in self.oversized:
            raise _size_error(settings.DETECTION_MAX_UPLOAD_MB, "DETECTION_MAX_UPLOAD_MB")
        if len(images) > MAX_IMAGES:
            raise ValidationError(
                "At most %(max)s images at once (%(n)s given).",
                code="too_many",
                params={"max": MAX_IMAGES, "n": len(images)},
            )
        errors = []
        for image in images:
            if image.size > IMAGE_MAX_MB * 1024 * 1024:
                errors.append(_file_error(image.name, _size_error(IMAGE_MAX_MB).messages[0]))
                continue
            image.seek(0)
            try:
                self.jpegs.append(to_jpeg(load_image(image.read())))
            except MediaError as exc:
                errors.append(_file_error(image.name, strip_prefix(str(exc), "image bytes")))
        if errors:
            raise ValidationError(errors)
        return images

    def clean_clip(self) -> Any:
        clip = self.cleaned_data.get("clip")
        self.clip_ext = check_clip(clip, oversized="clip" in self.oversized)
        return clip

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        if data.get("images") and data.get("clip"):
            raise ValidationError("Give images or one clip, not both.", code="both")
        if not data.get("images") and not data.get("clip"):
            raise ValidationError("Choose one or more images, or a clip.", code="none")
        return data


def check_clip(clip: Any, *, oversized: bool = False) -> str | None:
    """An uploaded clip's extension, once its size and extension are checked; None if none.

    `oversized`: the upload cap skipped the clip while it streamed in. The frames are read
    afterwards with `clip_jpegs`. Raises ValidationError naming the file and the reason."""
    if oversized:
        raise _size_error(settings.DETECTION_MAX_UPLOAD_MB, "DETECTION_MAX_UPLOAD_MB")
    if clip is None:
        return None
    if clip.size > settings.DETECTION_MAX_UPLOAD_MB * 1024 * 1024:
        raise _size_error(settings.DETECTION_MAX_UPLOAD_MB, "DETECTION_MAX_UPLOAD_MB")
    ext = video_extension(clip.name)
    if ext is None:
        raise _file_error(
            clip.name,
            f"unsupported extension {Path(clip.name or '').suffix or '(none)'!r}; "
            f"expected one of {', '.join(VIDEO_EXTENSIONS)}",
        )
    return ext


def file_label(filename: str | None) -> str:
    """A client's file name as quoted in errors and messages: no folders, bounded."""
    name = Path(filename or "").name or "(no name)"
    return name[: MAX_NAME - 1] + "…" if len(name) > MAX_NAME else name


def _file_error(filename: str | None, reason: str) -> ValidationError:
    return ValidationError(
        "%(name)s: %(reason)s",
        code="bad_file",
        params={"name": file_label(filename), "reason": reason},
    )


def to_jpeg(frame: np.ndarray) -> bytes:
    """A BGR frame as a JPEG, at most MAX_SIDE pixels on its longer side."""
    height, width = frame.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise MediaError("the image cannot be encoded as a JPEG")
    return jpeg.tobytes()


def image_file_to_jpeg(upload: Any) -> bytes:
    """An uploaded image (any format Pillow reads) as a clean JPEG; MediaError if not one."""
    upload.seek(0)
    return to_jpeg(load_image(upload.read()))


def clip_jpegs(upload: Any, ext: str) -> list[bytes]:
    """The clip's frames at EXAMPLE_FPS (at most MAX_CLIP_FRAMES), as JPEGs.

    The upload is copied to a temporary file of its own (with its checked extension) that
    is removed afterwards. Raises ValidationError naming the file and the reason."""
    # Loaded on first use: the examples module brings the model code with it.
    from detection.engine.examples import example_frames

    temp_dir = getattr(settings, "FILE_UPLOAD_TEMP_DIR", None)
    with tempfile.NamedTemporaryFile(suffix=ext, dir=temp_dir) as temp:
        for chunk in upload.chunks():
            temp.write(chunk)
        temp.flush()
        try:
            jpegs = list(_first(example_frames(temp.name, EXAMPLE_FPS), MAX_CLIP_FRAMES))
        except MediaError as exc:
            raise _file_error(upload.name, strip_prefix(str(exc), temp.name)) from None
        except cv2.error as exc:
            reason = f"OpenCV could not decode the video ({exc.msg or exc})"
            raise _file_error(upload.name, reason) from None
    if not jpegs:
        raise _file_error(upload.name, "no frame of the video could be decoded")
    return jpegs


def _first(frames: Iterator[np.ndarray], limit: int) -> Iterator[bytes]:
    for count, frame in enumerate(frames):
        if count >= limit:
            return
        yield to_jpeg(frame)


# --- Views ----------------------------------------------------------------------------------


@login_required
@csrf_exempt
@require_POST
def add_exemplars(request: HttpRequest, pk: int) -> HttpResponse:
    # Who may, before the body is read: a hidden analysis costs no upload (and is a 404).
    analysis = get_object_or_404(visible_analyses(request.user).select_related("camera"), pk=pk)
    # The size cap must be in place before anything reads the body; the CSRF check runs
    # after it (see uploads.py).
    cap = upload_handlers.install(request, settings.DETECTION_MAX_UPLOAD_MB * upload_handlers.MIB)
    return _add_exemplars(request, analysis, cap)


@csrf_protect
def _add_exemplars(
    request: HttpRequest, analysis: Analysis, cap: upload_handlers.CappedUploadHandler
) -> HttpResponse:
    back = f"{analysis.get_absolute_url()}#examples"
    form = ExemplarForm(request.POST, request.FILES, oversized=cap.oversized)
    if not form.is_valid():
        messages.error(request, "Examples not added: " + " ".join(_form_errors(form)))
        return redirect(back)
    data = form.cleaned_data
    try:
        if data["clip"] is not None:
            jpegs, source = clip_jpegs(data["clip"], form.clip_ext or ""), Exemplar.Source.CLIP
        else:
            jpegs, source = form.jpegs, Exemplar.Source.UPLOAD
    except ValidationError as exc:
        messages.error(request, "Examples not added: " + " ".join(exc.messages))
        return redirect(back)
    target = {"camera": analysis.camera} if data["scope"] == "camera" else {"analysis": analysis}
    added = actions.add_exemplars(
        jpegs, kind=data["kind"], source=source, user=request.user, **target
    )
    log.info(
        "user %s added %d %s examples to %s %s",
        request.user.pk,
        len(added),
        data["kind"],
        data["scope"],
        analysis.camera_id if data["scope"] == "camera" else analysis.pk,
    )
    kind = Exemplar.Kind(data["kind"]).label.lower()
    scope = "this camera" if data["scope"] == "camera" else "this analysis"
    noun = "example" if len(added) == 1 else "examples"
    messages.success(
        request,
        f"Added {len(added)} {kind} {noun} for {scope}; a running analysis uses them "
        "within seconds.",
    )
    return redirect(back)


def _form_errors(form: ExemplarForm) -> list[str]:
    return [message for errors in form.errors.values() for message in errors]


@login_required
@require_safe
def exemplar_image(request: HttpRequest, pk: int) -> FileResponse:
    """An example's image, for those who may see its camera (MEDIA_URL is never served)."""
    exemplar = get_object_or_404(visible_exemplars(request.user), pk=pk)
    # An example's image never changes (a new one is a new example).
    return private_jpeg(exemplar.image, "example", "private, max-age=3600")


@login_required
@require_POST
def exemplar_delete(request: HttpRequest, pk: int) -> HttpResponse:
    exemplar = get_object_or_404(
        visible_exemplars(request.user).select_related("analysis", "camera"), pk=pk
    )
    back = _back(request, exemplar)
    deleted = actions.delete_exemplars(Exemplar.objects.filter(pk=exemplar.pk))
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        return JsonResponse({"ok": True, "deleted": deleted})
    messages.success(request, f"Removed {exemplar.get_kind_display().lower()} example.")
    return redirect(back)


def _back(request: HttpRequest, exemplar: Exemplar) -> str:
    """The page the form was on (same site only), else the example's analysis or camera."""
    wanted = request.POST.get("next", "")
    if wanted and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    if exemplar.analysis_id:
        return f"{exemplar.analysis.get_absolute_url()}#examples"
    latest = Analysis.objects.filter(camera_id=exemplar.camera_id).order_by("-created_at").first()
    return f"{latest.get_absolute_url()}#examples" if latest else reverse("dashboard")
