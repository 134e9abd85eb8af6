"""Where the worker's pictures of an analysis live on disk: the latest scored frame, and
each incident's clip.

The worker writes it (a JPEG of at most 640 px with the localisation box drawn) and the
`detection:frame` view serves it; both build the path here so they cannot disagree. The name
comes from the integer id only: nothing user-typed becomes part of a path.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def latest_frame_path(analysis_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "live" / f"analysis-{int(analysis_id)}.jpg"


def incident_clip_path(incident_id: int) -> Path:
    """An incident's short clip (H.264 MP4, written by the worker; see detection.worker.clips)."""
    return Path(settings.MEDIA_ROOT) / "clips" / f"incident-{int(incident_id)}.mp4"
