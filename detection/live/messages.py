"""Every message the live pages receive, built in one place, with every URL from `reverse()`.

The worker publishes scores, incidents, statuses and progress as it stores them (the score
of the frame whose picture it just wrote carries that picture's `frame_url`: no separate
message per picture, which doubled what every socket was sent); the socket sends snapshots
read from the database (and re-announces a score the layer dropped); the acknowledge view
answers with an incident. Each of those builds its payload here, so a page sees one shape
per kind whichever road the message took. `type` is added by the publisher (as the
consumer method's name) or by the socket.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.urls import reverse

# A score as pages chart it: FrameScore.SCORE_FIELDS, under the names pages use.
SCORE_KEYS = (
    "frame_index",
    "time_s",
    "captured_at",
    "score",
    "normal",
    "anomaly",
    "prompt_score",
    "novelty",
    "learning",
)
# What a status message may carry besides `status` (pages update what is present).
# `phase` says what a running analysis is doing before its first score ("loading model");
# "" once it scores. `last_error` is the camera's, credentials redacted.
STATUS_KEYS = ("progress", "error_message", "camera_status", "last_error", "reset", "phase")


def score_message(
    frame_index: int,
    time_s: float,
    captured_at: datetime | None,
    score: float,
    normal: float,
    anomaly: float,
    prompt_score: float | None = None,
    novelty: float | None = None,
    learning: bool = False,
) -> dict[str, Any]:
    """`prompt_score` and `novelty` say what went into `score`; `learning` frames were
    learned as normal and are never anomalies (see detection.engine.detector)."""
    values = (frame_index, time_s, captured_at.isoformat() if captured_at else None)
    extra = (score, normal, anomaly, prompt_score, novelty, bool(learning))
    return dict(zip(SCORE_KEYS, (*values, *extra), strict=True))


def score_from_row(row: tuple[Any, ...]) -> dict[str, Any]:
    """A score from a `values_list(*FrameScore.SCORE_FIELDS)` row."""
    return score_message(*row)


def live_score_message(
    fields: dict[str, Any],
    *,
    previous: int | None,
    picture: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A score as published: `previous` (the frame index stored before it, None for the
    first) lets a page notice a message it missed and ask for a resync. `picture` is the
    analysis's latest-frame URL (`frame_url`) when the picture now shows this score's frame:
    the page then shows it, as it shows a snapshot's `frame_url`."""
    message = {**fields, "previous": previous, **extra}
    if picture is not None:
        message["frame_url"] = picture
    return message


def frame_url(analysis_id: int, frame_index: int | None) -> str | None:
    """The latest-frame image of an analysis, versioned by the frame it shows."""
    if frame_index is None:
        return None
    return f"{reverse('detection:frame', args=[analysis_id])}?v={int(frame_index)}"


def status_message(status: str, **fields: Any) -> dict[str, Any]:
    unknown = set(fields) - set(STATUS_KEYS)
    if unknown:
        raise TypeError(f"not part of a status message: {', '.join(sorted(unknown))}")
    return {"status": status, **fields}


def progress_message(
    progress: float, *, scored: int | None = None, expected: int | None = None
) -> dict[str, Any]:
    """A file analysis's progress: `scored` frames stored of the `expected` samples (the
    header's frame count at the sampling rate), when known."""
    return {"progress": progress, "scored": scored, "expected": expected}


def incident_message(incident: Any) -> dict[str, Any]:
    """An incident as live pages, webhooks and the acknowledge API all see it."""
    acknowledged_by = incident.acknowledged_by if incident.acknowledged_by_id else None
    return {
        "id": incident.pk,
        "start_time_s": incident.start_time_s,
        "end_time_s": incident.end_time_s,
        "peak_score": incident.peak_score,
        "peak_time_s": incident.peak_time_s,
        "open": incident.is_open,
        "acknowledged_by": acknowledged_by.get_username() if acknowledged_by else None,
        "acknowledged_at": incident.acknowledged_at.isoformat()
        if incident.acknowledged_at
        else None,
        "thumbnail_url": incident.thumbnail_url,
        "clip_url": incident.clip_url,
        "feedback": incident.feedback or None,
    }
