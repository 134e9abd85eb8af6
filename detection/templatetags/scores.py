"""`{{ value|score:threshold }}`: a score as pages show it beside its Normal/Anomaly label."""

from __future__ import annotations

from django import template

register = template.Library()


def score_text(score: float, threshold: float, digits: int = 3) -> str:
    """`score` to `digits` decimals, or more where rounding would carry it across the
    threshold: 0.5997 at 0.6 reads "0.5997", never "0.600" beside "Normal"."""
    text = f"{score:.{digits}f}"
    for more in range(digits + 1, 10):
        if (float(text) >= threshold) == (score >= threshold):
            break
        text = f"{score:.{more}f}"
    return text


@register.filter
def score(value: float | None, threshold: float) -> str:
    if value is None:
        return ""
    return score_text(float(value), float(threshold))
