"""Where the worker's pictures of an analysis live on disk: the latest scored frame, and
each incident's clip.

The worker writes it (a JPEG of at most 640 px with the localisation box drawn) and the
`detection:frame` view serves it; both build the path here so they cannot disagree. The name
comes from the integer id only: nothing user-typed becomes part of a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


def latest_frame_path(analysis_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "live" / f"analysis-{int(analysis_id)}.jpg"


# What the clip is: H.264 in MP4 (Debian's Chromium plays it: tests/web/test_incidents_page.py).
INCIDENT_CLIP_TYPE = "video/mp4"


def incident_clip_path(incident_id: int) -> Path:
    """An incident's short clip (H.264 MP4, written by the worker; see detection.worker.clips)."""
    return Path(settings.MEDIA_ROOT) / "clips" / f"incident-{int(incident_id)}.mp4"


# --- Exploring results and the live picture (issue 14, items 7 and 8; detection.worker.preview)


def frame_ring_dir(analysis_id: int) -> Path:
    """A live analysis's last scored frames (small JPEGs named <frame index>.jpg), a bounded
    ring the worker keeps so that a click on the chart can show them."""
    return Path(settings.MEDIA_ROOT) / "live" / f"analysis-{int(analysis_id)}-frames"


def live_picture_path(analysis_id: int) -> Path:
    """The live camera picture (a few per second while someone watches), replaced atomically."""
    return Path(settings.MEDIA_ROOT) / "live" / f"analysis-{int(analysis_id)}-picture.jpg"


def watch_marker_path(analysis_id: int) -> Path:
    """Touched by the picture view while a page shows the picture; workers read its mtime."""
    return Path(settings.MEDIA_ROOT) / "live" / f"analysis-{int(analysis_id)}-watched"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a sibling `.part` file and a rename: a reader (the
    frame views, nginx) gets the old file or the new one, never half a JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, path)
