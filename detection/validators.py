"""Field validation for analyses, shared by the models, the admin and the portal forms."""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError

from .engine.limits import MAX_SAMPLING_FPS, prompt_problem, split_prompts


def prompt_lines(value: str) -> None:
    """The engine's prompt rule (engine/limits.py), as form and model errors."""
    problem = prompt_problem(split_prompts(value))
    if problem is None:
        return
    if problem.code == "blank":
        raise ValidationError("Write at least one prompt (one per line).", code="blank")
    if problem.code == "too_many":
        raise ValidationError(
            "At most %(max)s prompts per class (%(n)s given).",
            code="too_many",
            params={"max": problem.limit, "n": problem.found},
        )
    raise ValidationError(
        "A prompt is %(n)s characters long; keep each under %(max)s.",
        code="too_long",
        params={"n": problem.found, "max": problem.limit},
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
    """`Analysis.webhook_url`: when saved, the rule every delivery follows (worker/webhooks.py).

    Unlike a camera, a receiver whose name does not resolve is refused: there is nothing to
    check it against, and nobody would notice deliveries failing later.
    """
    if not value:
        return
    from .engine.netpolicy import AddressError
    from .worker.webhooks import check_url

    try:
        check_url(value)
    except AddressError as error:
        raise ValidationError(str(error), code=f"webhook_{error.code}") from None
