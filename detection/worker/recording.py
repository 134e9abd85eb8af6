"""Storing what the worker scored: scores, summaries, incidents, in one transaction.

`Recorder.store` is all or nothing, in the database and in memory: should the transaction
fail (the database restarted, a SQLite lock outlasted its timeout), the recorder's state
(smoothing window, incident tracker, summary fields) is as before the call, so the worker
can store the very same items again after reconnecting. Storing them again after a commit
whose acknowledgement was lost changes nothing either (unique frame index, summaries
recomputed from the same state, an opened incident found rather than created twice).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import cv2
import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from detection.engine.incidents import IncidentEvent, IncidentTracker, OpenIncident, Smoother
from detection.engine.scoring import Box
from detection.engine.stills import fit_width
from detection.frames import latest_frame_path, write_atomic
from detection.live import messages
from detection.live.publisher import Publisher
from detection.models import Analysis, FrameScore, Incident
from detection.worker import notifications, webhooks
from detection.worker.keyframes import KeyFrames

log = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 640

# What store() changes on the Analysis and on the open Incident (restored when it fails).
SUMMARY_FIELDS = (
    "average_score",
    "frames_scored",
    "peak_score",
    "peak_time_s",
    "last_score",
    "last_frame_index",
    "updated_at",
)
INCIDENT_FIELDS = ("peak_score", "peak_time_s", "peak_frame_index", "end_time_s", "ended_at")


@dataclass
class ScoredItem:
    frame_index: int
    time_s: float
    captured_at: datetime | None
    score: float
    normal: float
    anomaly: float
    image: np.ndarray  # the original BGR frame, for incident thumbnails
    box: Box | None = None
    prompt_score: float | None = None
    novelty: float | None = None
    learning: bool = False  # learned as normal: stored and shown, never judged


def thumbnail_jpeg(image: np.ndarray, box: Box | None) -> bytes:
    frame = image.copy()
    if box is not None:
        thickness = max(2, frame.shape[1] // 200)
        cv2.rectangle(frame, (box.x0, box.y0), (box.x1 - 1, box.y1 - 1), (0, 0, 255), thickness)
    ok, data = cv2.imencode(
        ".jpg", fit_width(frame, THUMBNAIL_WIDTH), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    return data.tobytes() if ok else b""


@dataclass
class _Saved:
    """The recorder's in-memory state before a store(), restored should it fail."""

    summary: dict[str, Any]
    incident: Incident | None
    incident_fields: dict[str, Any]
    thumbnail: str


class LeaseLost(Exception):
    """The analysis is no longer ours (stopped, re-run or taken over): nothing was stored."""


class Recorder:
    """Everything the worker stores for one analysis, with its incident state."""

    def __init__(
        self,
        analysis: Analysis,
        publisher: Publisher,
        owner: str = "",
        threshold: float | None = None,
    ) -> None:
        self.analysis = analysis
        self.publisher = publisher
        self.owner = owner
        self.keyframes = KeyFrames()
        # Told of each incident opened or closed, once committed (detection.worker.clips).
        self.on_incident: Callable[[Incident], None] | None = None
        self.smoother = Smoother(analysis.smoothing_window)
        self.tracker = IncidentTracker(
            threshold=analysis.threshold if threshold is None else threshold,
            hysteresis=analysis.hysteresis,
            open_after=analysis.incident_open_frames,
            close_after=analysis.incident_close_frames,
        )
        # A resumed analysis picks up its open incident instead of opening a second one.
        self.incident = analysis.incidents.filter(end_time_s__isnull=True).order_by("-pk").first()
        if self.incident is not None:
            self.tracker.current = OpenIncident(
                start_time_s=self.incident.start_time_s,
                start_frame_index=-1,
                peak_score=self.incident.peak_score,
                peak_time_s=self.incident.peak_time_s,
                peak_frame_index=self.incident.peak_frame_index or -1,
            )

    @property
    def threshold(self) -> float:
        return self.tracker.threshold

    def set_threshold(self, threshold: float) -> None:
        """The automatic threshold, known once learning ends."""
        self.tracker.threshold = threshold

    def store(self, items: list[ScoredItem]) -> None:
        """Store `items` (one transaction), then publish them; see the module docstring."""
        if not items:
            return
        a = self.analysis
        # Feed copies; they replace the originals only once the transaction committed.
        smoother, tracker = copy.deepcopy(self.smoother), copy.deepcopy(self.tracker)
        events: list[tuple[IncidentEvent, ScoredItem]] = []
        for item in items:
            if item.learning:
                continue  # learned as normal: never part of an incident
            smoothed = smoother(item.score)
            events += [(e, item) for e in tracker.feed(smoothed, item.time_s, item.frame_index)]
        saved = self._snapshot()
        previous_index = a.last_frame_index
        self._summarise(items)
        try:
            with transaction.atomic():
                # Checked in the same transaction as the writes, so an operator's Stop or
                # Re-run takes effect at once, not at the next heartbeat.
                if (
                    self.owner
                    and not Analysis.objects.filter(
                        pk=a.pk, lease_owner=self.owner, status=Analysis.Status.RUNNING
                    ).exists()
                ):
                    raise LeaseLost(a.pk)
                # ignore_conflicts: a batch retried after a crash between commit and
                # acknowledgement stores nothing twice (unique analysis + frame_index).
                FrameScore.objects.bulk_create(map(self._row, items), ignore_conflicts=True)
                a.save(update_fields=list(SUMMARY_FIELDS))
                changed, peaks = [], {}
                for event, item in events:
                    changed.append(self._apply(event, item))
                    if event.kind in ("opened", "peak") and self.incident is not None:
                        peaks[item.frame_index] = self.incident.pk
        except BaseException:
            self._restore(saved)
            raise
        self.smoother, self.tracker = smoother, tracker
        # The picture first: the batch's last score then tells pages to show it (one
        # message per score, not a score and a picture notice per frame).
        pictured = self._write_latest_frame(items[-1])
        self._publish_scores(items, previous_index, pictured)
        for incident in filter(None, changed):
            self._announce(incident)
        self.keyframes.observe(items, peaks, self.tracker.threshold)

    def _row(self, item: ScoredItem) -> FrameScore:
        box = item.box
        return FrameScore(
            analysis_id=self.analysis.pk,
            frame_index=item.frame_index,
            time_s=item.time_s,
            captured_at=item.captured_at,
            score=item.score,
            normal_similarity=item.normal,
            anomaly_similarity=item.anomaly,
            prompt_score=item.prompt_score,
            novelty=item.novelty,
            learning=item.learning,
            box_x0=box.x0 if box else None,
            box_y0=box.y0 if box else None,
            box_x1=box.x1 if box else None,
            box_y1=box.y1 if box else None,
        )

    def _summarise(self, items: list[ScoredItem]) -> None:
        """Fold a batch into the analysis's summary fields (in memory; saved with the rows)."""
        a = self.analysis
        previous = a.frames_scored
        total = previous + len(items)
        batch_sum = sum(i.score for i in items)
        a.average_score = ((a.average_score or 0.0) * previous + batch_sum) / total
        a.frames_scored = total
        judged = [i for i in items if not i.learning]
        peak = max(judged, key=lambda i: i.score) if judged else None
        if peak is not None and (a.peak_score is None or peak.score > a.peak_score):
            a.peak_score, a.peak_time_s = peak.score, peak.time_s
        a.last_score, a.last_frame_index = items[-1].score, items[-1].frame_index

    def _publish_scores(
        self, items: list[ScoredItem], previous_index: int | None, pictured: bool
    ) -> None:
        """Each score; the last carries the latest-frame URL when `pictured` (its frame was
        just written there)."""
        last = items[-1]
        for item in items:
            # `previous` lets a page notice a message it missed and ask for a resync.
            item_previous, previous_index = previous_index, item.frame_index
            fields = messages.score_message(
                item.frame_index,
                item.time_s,
                item.captured_at,
                item.score,
                item.normal,
                item.anomaly,
                item.prompt_score,
                item.novelty,
                item.learning,
            )
            picture = None
            if pictured and item is last:
                picture = messages.frame_url(self.analysis.pk, item.frame_index)
            message = messages.live_score_message(
                fields,
                previous=item_previous,
                picture=picture,
                threshold=self.tracker.threshold,
                # Wall time of publishing, for measuring score-to-browser latency.
                published_at=time.time(),
            )
            self.publisher.publish(self.analysis.pk, "score", message)

    def _apply(self, event: IncidentEvent, item: ScoredItem) -> Incident | None:
        state = event.incident
        at = item.captured_at or timezone.now()
        if event.kind == "opened":
            started = at - timedelta(seconds=max(0.0, item.time_s - state.start_time_s))
            # get_or_create: a batch stored again after a lost commit acknowledgement finds
            # the incident it opened the first time.
            self.incident, _ = Incident.objects.get_or_create(
                analysis=self.analysis,
                start_time_s=state.start_time_s,
                defaults={
                    "started_at": started,
                    "peak_score": state.peak_score,
                    "peak_time_s": state.peak_time_s,
                    "peak_frame_index": state.peak_frame_index,
                },
            )
            self._thumbnail(item)
            return self.incident
        if self.incident is None:
            return None
        if event.kind == "peak":
            self.incident.peak_score, self.incident.peak_time_s = (
                state.peak_score,
                state.peak_time_s,
            )
            self.incident.peak_frame_index = state.peak_frame_index
            self.incident.save(update_fields=["peak_score", "peak_time_s", "peak_frame_index"])
            self._thumbnail(item)
            return None
        self.incident.end_time_s, self.incident.ended_at = item.time_s, at
        self.incident.save(update_fields=["end_time_s", "ended_at"])
        closed, self.incident = self.incident, None
        return closed

    def _write_latest_frame(self, item: ScoredItem) -> bool:
        """The newest scored frame for the live page, replaced atomically (best effort).
        Whether it was written: only then does its score tell pages to show it."""
        path = latest_frame_path(self.analysis.pk)
        try:
            write_atomic(path, thumbnail_jpeg(item.image, item.box))
        except OSError as exc:
            log.warning("analysis %s: cannot write the live frame: %s", self.analysis.pk, exc)
            return False
        return True

    def _thumbnail(self, item: ScoredItem) -> None:
        assert self.incident is not None
        data = thumbnail_jpeg(item.image, item.box)
        if data:
            thumbnail = self.incident.thumbnail
            previous = thumbnail.name
            thumbnail.save(f"incident-{self.incident.pk}.jpg", ContentFile(data), save=False)
            self.incident.save(update_fields=["thumbnail"])
            if previous and previous != thumbnail.name:
                # Only once the new name is committed: a rolled-back store keeps the old one.
                storage = thumbnail.storage
                transaction.on_commit(lambda: storage.delete(previous))

    def _snapshot(self) -> _Saved:
        incident = self.incident
        return _Saved(
            summary={f: getattr(self.analysis, f) for f in SUMMARY_FIELDS},
            incident=incident,
            incident_fields={f: getattr(incident, f) for f in INCIDENT_FIELDS} if incident else {},
            thumbnail=incident.thumbnail.name if incident else "",
        )

    def _restore(self, saved: _Saved) -> None:
        """Undo what a failed store() changed in memory (the database rolled back)."""
        for name, value in saved.summary.items():
            setattr(self.analysis, name, value)
        self.incident = saved.incident
        if saved.incident is not None:
            for name, value in saved.incident_fields.items():
                setattr(saved.incident, name, value)
            saved.incident.thumbnail.name = saved.thumbnail

    def close_open_incident(self, time_s: float) -> None:
        """A file ended while an incident was open: it ends with the file."""
        if self.incident is not None:
            self.incident.end_time_s, self.incident.ended_at = time_s, timezone.now()
            self.incident.save(update_fields=["end_time_s", "ended_at"])
            self._announce(self.incident)
            self.incident = None

    def _announce(self, incident: Incident) -> None:
        if self.on_incident is not None:
            self.on_incident(incident)  # never raises: clips log their own failures
        payload = messages.incident_message(incident)
        self.publisher.publish(self.analysis.pk, "incident", payload)
        # After the store transaction: the log row and the mail's queries are small, and the
        # network waits on background threads (webhooks.py, notifications.py).
        webhooks.enqueue(
            self.analysis,
            incident,
            {
                "event": "incident.opened" if incident.is_open else "incident.closed",
                "analysis": {
                    "id": self.analysis.pk,
                    "name": self.analysis.name,
                    "camera": self.analysis.camera.name,
                },
                "incident": payload,
            },
        )
        if incident.is_open:
            notifications.incident_opened(self.analysis, incident)
