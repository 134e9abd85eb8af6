"""Field validation for analyses, shared by the models, the admin and the portal forms."""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError

from .engine.limits import MAX_PROMPTS_PER_CLASS, MAX_SAMPLING_FPS

MAX_PROMPT_CHARS = 1000  # one prompt; CLIP reads ~77 tokens, far fewer characters


def prompt_lines(value: str) -> None:
    lines = [line.strip() for line in (value or "").splitlines() if line.strip()]
    if not lines:
        raise ValidationError("Write at least one prompt (one per line).", code="blank")
    if len(lines) > MAX_PROMPTS_PER_CLASS:
        raise ValidationError(
            "At most %(max)s prompts per class (%(n)s given).",
            code="too_many",
            params={"max": MAX_PROMPTS_PER_CLASS, "n": len(lines)},
        )
    for line in lines:
        if len(line) > MAX_PROMPT_CHARS:
            raise ValidationError(
                "A prompt is %(n)s characters long; keep each under %(max)s.",
                code="too_long",
                params={"n": len(line), "max": MAX_PROMPT_CHARS},
            )


def open_unit_interval(value: float) -> None:
    if value is None or not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValidationError(
            "Must lie strictly between 0 and 1 (got %(value)s).",
            code="range",
            params={"value": value},
        )


def sampling_fps(value: float) -> None:
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValidationError("The sampling rate must be above 0 frames/s.", code="range")
    if value > MAX_SAMPLING_FPS:
        raise ValidationError(
            "At most %(max)s frames/s.", code="range", params={"max": int(MAX_SAMPLING_FPS)}
        )


def webhook_url(value: str) -> None:
    """`Analysis.webhook_url`: the rule every delivery follows (detection.webhooks), when saved.

    Unlike a camera, a receiver whose name does not resolve is refused: there is nothing to
    check it against, and nobody would notice deliveries failing later.
    """
    if not value:
        return
    from .engine.netpolicy import AddressError
    from .webhooks import check_url

    try:
        check_url(value)
    except AddressError as error:
        raise ValidationError(str(error), code=f"webhook_{error.code}") from None
