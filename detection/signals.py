"""Files that belong to an incident go with it: its clip, thumbnail and kept frames; an
analysis's kept live frames and live picture go with the analysis.

A post_delete receiver, because deleting an analysis or a camera deletes its incidents by
cascade, which never calls `Incident.delete()`. The files are removed once the transaction
commits: a rolled-back delete keeps them (the rows still point at them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from django.core.exceptions import SuspiciousFileOperation
from django.db import transaction

from detection.frames import incident_clip_path
from detection.models import Analysis, Incident
from detection.worker import preview

log = logging.getLogger(__name__)


def _remove(incident_id: int, thumbnail: Any, names: list[str]) -> None:
    storage = thumbnail.storage
    try:
        incident_clip_path(incident_id).unlink(missing_ok=True)
        for name in names:
            storage.delete(name)
    except (OSError, SuspiciousFileOperation):  # never break the delete that called us
        log.warning("incident %s: could not delete its files", incident_id, exc_info=True)
        return
    # The frames' own folder (incidents/frames/<id>/), once empty.
    try:
        os.rmdir(Path(storage.path(f"incidents/frames/{int(incident_id)}")))
    except (OSError, NotImplementedError, SuspiciousFileOperation):
        pass  # not empty, already gone, or a storage without paths


def incident_deleted(sender: type[Incident], instance: Incident, **kwargs: Any) -> None:
    names = [instance.thumbnail.name] if instance.thumbnail else []
    names += [n for n in instance.frames or () if isinstance(n, str) and n]
    pk, thumbnail = instance.pk, instance.thumbnail
    transaction.on_commit(lambda: _remove(pk, thumbnail, names), using=kwargs.get("using"))


def analysis_deleted(sender: type[Analysis], instance: Analysis, **kwargs: Any) -> None:
    analysis_id = instance.pk
    transaction.on_commit(lambda: preview.delete_files(analysis_id), using=kwargs.get("using"))
