"""Portal forms: upload a video for analysis, test one image against prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from django import forms
from django.core.exceptions import ValidationError

from detection import validators
from detection.engine import MediaError
from detection.engine.images import load_image
from detection.engine.limits import split_prompts
from detection.engine.prompt_help import sound_warnings
from detection.engine.video import VIDEO_EXTENSIONS
from detection.models import Analysis
from detection.web.storage import video_extension

IMAGE_MAX_MB = 20
PROMPT_HELP = "One prompt per line; several lines form an ensemble."
# The field strips whitespace first, so blank text fails as "required": say it the same way.
PROMPT_ERRORS = {"required": "Write at least one prompt (one per line)."}


def _size_error(limit_mb: int, setting: str | None = None) -> ValidationError:
    where = f" ({setting})" if setting else ""
    return ValidationError(
        "the file is larger than the upload limit of %(mb)s MB%(where)s",
        code="too_large",
        params={"mb": limit_mb, "where": where},
    )


class PromptsForm(forms.Form):
    """Prompts and threshold, shared by both pages."""

    normal_prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        validators=[validators.prompt_lines],
        error_messages=PROMPT_ERRORS,
        help_text=PROMPT_HELP,
        initial="a normal scene\nan empty street",
    )
    anomaly_prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        validators=[validators.prompt_lines],
        error_messages=PROMPT_ERRORS,
        help_text=PROMPT_HELP,
        initial="a fight\na fire\na car crash",
    )
    threshold = forms.FloatField(
        initial=0.6,
        validators=[validators.open_unit_interval],
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0.01", "max": "0.99"}),
        help_text="Probability of anomaly at or above which a frame is an anomaly.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Advice, not errors (prompts that describe sound): a valid form still submits.
        self.warnings: list[str] = []

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        self.warnings = sound_warnings(
            split_prompts(data.get("normal_prompts")), split_prompts(data.get("anomaly_prompts"))
        )
        return data

    def clean_normal_prompts(self) -> str:
        # Stored one prompt per line, without the blank lines and stray spaces.
        return "\n".join(split_prompts(self.cleaned_data["normal_prompts"]))

    def clean_anomaly_prompts(self) -> str:
        return "\n".join(split_prompts(self.cleaned_data["anomaly_prompts"]))


class VideoUploadForm(PromptsForm):
    video = forms.FileField(
        help_text=f"{', '.join(VIDEO_EXTENSIONS)}; the content is checked, not just the name.",
        widget=forms.FileInput(attrs={"accept": ",".join(VIDEO_EXTENSIONS)}),
    )
    name = forms.CharField(
        max_length=120,
        required=False,
        help_text="Defaults to the file's name.",
    )
    sampling_fps = forms.FloatField(
        label="Sampling rate (frames/s)",
        initial=1.0,
        validators=[validators.sampling_fps],
        widget=forms.NumberInput(attrs={"step": "0.1", "min": "0.1"}),
    )
    # Learning the normal: the model's fields (choices, bounds, help), as the admin has them.
    # Left out of a POST, they take the model's defaults (the prototype's scoring).
    mode = Analysis._meta.get_field("mode").formfield(label="Scoring mode", required=False)
    learning_seconds = Analysis._meta.get_field("learning_seconds").formfield(
        label="Learning period (seconds)",
        required=False,
        validators=Analysis._meta.get_field("learning_seconds").validators,
        widget=forms.NumberInput(attrs={"step": "1", "min": "0"}),
    )
    auto_threshold = Analysis._meta.get_field("auto_threshold").formfield(
        label="Automatic threshold"
    )

    field_order = ["video", "name", "normal_prompts", "anomaly_prompts", "sampling_fps"]

    def __init__(self, *args: Any, max_mb: int, oversized: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_mb = max_mb
        self.oversized = oversized
        self.video_ext: str | None = None  # the allowed, lower-cased extension, once valid
        if oversized:
            # The upload handler dropped the file; say why instead of "required".
            self.fields["video"].required = False

    def clean_mode(self) -> str:
        return self.cleaned_data.get("mode") or Analysis.Mode.PROMPTS

    def clean_learning_seconds(self) -> float:
        value = self.cleaned_data.get("learning_seconds")
        return 0.0 if value is None else value

    def clean_video(self) -> Any:
        video = self.cleaned_data.get("video")
        if self.oversized or (video is not None and video.size > self.max_mb * 1024 * 1024):
            raise _size_error(self.max_mb, "DETECTION_MAX_UPLOAD_MB")
        self.video_ext = video_extension(video.name)
        if self.video_ext is None:
            raise ValidationError(
                "unsupported extension %(ext)s; expected one of %(allowed)s",
                code="extension",
                params={
                    "ext": repr(_suffix(video.name)),
                    "allowed": ", ".join(VIDEO_EXTENSIONS),
                },
            )
        return video

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        video = data.get("video")
        if not data.get("name") and video is not None:
            # The client's filename is only a label here; it never becomes a path.
            data["name"] = (_stem(video.name) or "Uploaded video")[:120]
        # A new upload is a new camera: it has no examples of its normal yet.
        problem = learning_error(
            data.get("mode"), data.get("learning_seconds"), False, may_add_examples=False
        )
        if problem is not None and "learning_seconds" not in self.errors:
            self.add_error("learning_seconds", problem)
        return data


def learning_error(
    mode: str | None,
    learning_seconds: float | None,
    has_normal_examples: bool,
    *,
    may_add_examples: bool = True,
) -> ValidationError | None:
    """Normality and combined modes measure the distance to a learned normal: they need a
    learning period, or normal examples of the camera to start from."""
    if mode not in (Analysis.Mode.NORMALITY, Analysis.Mode.COMBINED) or has_normal_examples:
        return None
    if learning_seconds is not None and learning_seconds > 0:
        return None
    return ValidationError(
        "The %(mode)s mode compares frames with what the camera learned as normal: give a "
        "learning period above 0 seconds%(or_examples)s.",
        code="nothing_to_learn",
        params={
            "mode": Analysis.Mode(mode).value,
            "or_examples": ", or add normal examples of the camera first"
            if may_add_examples
            else "",
        },
    )


class ImageTestForm(PromptsForm):
    # Not required when an image is kept from this session's last upload (see __init__).
    image = forms.FileField(help_text=f"Any common image format, up to {IMAGE_MAX_MB} MB.")
    localize = forms.BooleanField(
        required=False,
        label="Localise",
        help_text="If the image is anomalous, find the most anomalous cell of a 4x4 grid.",
    )

    field_order = ["image", "normal_prompts", "anomaly_prompts", "threshold", "localize"]

    def __init__(
        self,
        *args: Any,
        oversized: bool = False,
        kept: bytes | None = None,
        kept_error: str | None = None,
        **kwargs: Any,
    ) -> None:
        """`kept`: the bytes of the image kept from this session's last upload, scored when
        no file is sent; `kept_error`: why the page's kept image cannot be used."""
        super().__init__(*args, **kwargs)
        self.oversized = oversized
        self.kept, self.kept_error = kept, kept_error
        self.frame: np.ndarray | None = None
        self.uploaded: bytes | None = None  # a new image's bytes, to be kept
        if oversized or kept is not None or kept_error is not None:
            self.fields["image"].required = False

    def clean_image(self) -> Any:
        image = self.cleaned_data.get("image")
        if self.oversized or (image is not None and image.size > IMAGE_MAX_MB * 1024 * 1024):
            raise _size_error(IMAGE_MAX_MB)
        if image is None:
            if self.kept_error is not None:
                raise ValidationError(self.kept_error, code="kept_image")
            self.frame = self._decode(self.kept or b"")
            return None
        # The content decides the format (a PNG named .jpg is fine, a text file is not);
        # decoded once here and scored from the array.
        image.seek(0)
        data = image.read()
        self.frame = self._decode(data)
        self.uploaded = data
        return image

    @staticmethod
    def _decode(data: bytes) -> np.ndarray:
        try:
            return load_image(data)
        except MediaError as exc:
            raise ValidationError(
                strip_prefix(str(exc), "image bytes"), code="not_an_image"
            ) from None


def strip_prefix(message: str, prefix: str) -> str:
    """Engine messages start with the path or source; pages show only the reason."""
    head = f"{prefix}: "
    return message[len(head) :] if message.startswith(head) else message


def _suffix(filename: str) -> str:
    # UploadedFile.name is already a bare file name (Django drops any directories).
    return Path(filename or "").suffix or "(none)"


def _stem(filename: str) -> str:
    return Path(filename or "").stem.strip()
