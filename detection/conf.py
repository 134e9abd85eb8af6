"""The engine's configuration, read from Django settings (themselves read from the env)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .engine import ModelSpec
from .engine.capture import DECODE_MODES


def model_spec(device: str | None = None, precision: str | None = None) -> ModelSpec:
    """The configured model; `device`/`precision` override the settings (CLI flags)."""
    return ModelSpec(
        name=settings.DETECTION_MODEL,
        pretrained=settings.DETECTION_PRETRAINED,
        device=device or settings.DETECTION_DEVICE,
        precision=precision or settings.DETECTION_PRECISION,
        cache_dir=str(cache_dir)
        if (cache_dir := getattr(settings, "DETECTION_CACHE_DIR", None))
        else None,
    )


def batch_size() -> int:
    return int(settings.DETECTION_BATCH_SIZE)


def full_rate_cameras() -> int:
    """How many live cameras may be sampled faster than scoring needs (pictures, clips)."""
    return int(getattr(settings, "DETECTION_FULL_RATE_CAMERAS", 4))


def logit_scale() -> float | None:
    """None: the model's own learned scale; a number (100 = the prototype): that scale."""
    return getattr(settings, "DETECTION_LOGIT_SCALE", None)


def normality_crops() -> bool | None:
    """Whether normality embeds cropped views (None: whatever the model supports best)."""
    return True if settings.DETECTION_NORMALITY_VIEWS == "crops" else None


def decode_mode() -> str:
    """How live sources decode less (DETECTION_DECODE): auto, all, grab or keyframes."""
    value = getattr(settings, "DETECTION_DECODE", "auto")
    if value not in DECODE_MODES:
        raise ImproperlyConfigured(
            f"DETECTION_DECODE={value!r} is invalid: expected one of {', '.join(DECODE_MODES)}."
        )
    return value
