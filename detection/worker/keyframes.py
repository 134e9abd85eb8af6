"""Clean frames around each incident's peak, kept for feedback.

An operator's "False alarm" teaches the camera that these frames are normal, "Confirm" that
they are anomalies (detection.actions.feedback turns them into exemplars). One frame is a
weak example (novelty averages the k nearest members of the memory), so up to BEFORE
frames before the peak, the peak and AFTER frames after it are kept, as long as they are at
or above the threshold (part of the incident, not the ordinary frames around it): clean JPEGs (no
localisation box), at most THUMBNAIL_WIDTH wide, named by frame index so that storing a
batch twice writes nothing twice. Best effort, after the scores are committed: a failure
here loses a feedback example, never a score.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from detection.models import Incident

log = logging.getLogger(__name__)

BEFORE = 2
AFTER = 2


@dataclass
class _Collecting:
    incident_id: int
    items: list[Any]
    after: int = AFTER


@dataclass
class KeyFrames:
    recent: deque[Any] = field(default_factory=lambda: deque(maxlen=BEFORE))
    collecting: _Collecting | None = None

    def observe(self, items: list[Any], peaks: dict[int, int], threshold: float) -> None:
        """`items` just stored (ScoredItem, in order); `peaks`: frame index -> incident id
        for the items that became an incident's peak. Only frames at or above `threshold`
        are kept: the ones the incident is about (a frame just before a covered lens is not
        an example of a covered lens)."""
        changed = False
        for item in items:
            if item.learning or item.score < threshold:
                self.recent.clear()  # "before the peak" means within the same run
                if self.collecting is not None:
                    self.collecting.after = 0
                continue
            incident_id = peaks.get(item.frame_index)
            if incident_id is not None:
                self.collecting = _Collecting(incident_id, [*self.recent, item])
                changed = True
            elif self.collecting is not None and self.collecting.after > 0:
                self.collecting.items.append(item)
                self.collecting.after -= 1
                changed = True
            self.recent.append(item)
        if changed and self.collecting is not None:
            self._write(self.collecting)

    def _write(self, collecting: _Collecting) -> None:
        from detection.worker.recording import thumbnail_jpeg

        names = []
        try:
            for item in collecting.items:
                name = f"incidents/frames/{collecting.incident_id}/{item.frame_index}.jpg"
                if not default_storage.exists(name):
                    data = ContentFile(thumbnail_jpeg(item.image, None))
                    name = default_storage.save(name, data)
                names.append(name)
            previous = (
                Incident.objects.filter(pk=collecting.incident_id)
                .values_list("frames", flat=True)
                .first()
            )
            Incident.objects.filter(pk=collecting.incident_id).update(frames=names)
        except OSError as exc:
            log.warning("incident %s: cannot keep its frames: %s", collecting.incident_id, exc)
            return
        for stale in set(previous or ()) - set(names):
            default_storage.delete(stale)
