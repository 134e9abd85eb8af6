"""Incident clips in the worker: from CLIP_PRE_S before an incident to CLIP_POST_S after it.

Files: once an incident closes (a file's last incident closes with the file), its range is
decoded again from the source and encoded in a background thread, so scoring goes on
meanwhile; a resumed analysis also makes the clips its earlier run did not get to.

Live cameras: what came before an incident is gone from the camera by the time the incident
opens (it opens after `incident_open_frames` frames), so each live job keeps a short ring
of the frames it read: downscaled to the clip's size, JPEG-compressed (in the worker's
"pictures" thread, which also writes detection.worker.preview's frame ring), only as many
seconds as a pre-roll needs. When an incident opens, a clip starts from the ring and then
takes each new frame (a streaming encode: memory stays that of a few frames), until
CLIP_POST_S after the incident closed, or MAX_CLIP_S, or the job stops (the clip then ends
there).

The frames are the camera's newest as the source's reader thread decoded them, taken at
max(sampling rate, LIVE_FPS) per second without taking them from scoring
(`detection.engine.stills.newest_frame`): no second connection to the camera, no decoding.
The worker's loop wakes at least every 0.25 s while it serves a live camera, so LIVE_FPS = 4
costs no extra wake-ups.

Clips are a convenience: any failure is logged and the clip is dropped; scoring and storing
never wait for, or fail because of, a clip.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detection.engine.clip import (
    CLIP_POST_S,
    CLIP_PRE_S,
    ClipStats,
    ClipWriter,
    shrink,
    write_file_clip,
)
from detection.engine.errors import MediaError
from detection.engine.stills import newest_frame
from detection.frames import incident_clip_path
from detection.models import Analysis, Incident

log = logging.getLogger(__name__)

# The ring must reach CLIP_PRE_S before an incident's first frame when the incident opens,
# `incident_open_frames` frames later; at most this many seconds are kept whatever the setting.
RING_SLACK_S = 2.0
LIVE_FPS = 4.0
RING_MAX_S = 30.0
RING_JPEG_QUALITY = 85
RING_MAX_BEHIND = 8  # pre-roll frames waiting for the encoder thread, per camera


def _ring_jpeg(image: np.ndarray) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", shrink(image), [cv2.IMWRITE_JPEG_QUALITY, RING_JPEG_QUALITY])
    return jpeg.tobytes() if ok else b""


def _compressed(entry: Future[bytes]) -> bytes:
    """A pre-roll frame's JPEG, once its encoding finished (b"": it failed or was dropped)."""
    try:
        return entry.result()
    except (Exception, CancelledError):  # noqa: BLE001 - a clip is best effort
        return b""


def _describe(stats: ClipStats) -> str:
    return (
        f"{stats.seconds:.1f} s, {stats.frames} frames, {stats.bytes // 1024} KB, "
        f"encoded in {stats.encode_s * 1000:.0f} ms"
    )


def _forget_if_deleted(incident_id: int) -> None:
    """A clip finished after its incident was deleted (a re-run meanwhile) goes too."""
    if not Incident.objects.filter(pk=incident_id).exists():
        incident_clip_path(incident_id).unlink(missing_ok=True)


@dataclass
class _Recording:
    incident_id: int
    writer: ClipWriter
    end_s: float | None = None  # set once the incident closed


class LiveClips:
    """One live job's pre-roll ring and the clips it is recording."""

    def __init__(
        self, analysis: Analysis, source: Any = None, *, encoder: ThreadPoolExecutor
    ) -> None:
        self.analysis = analysis
        self.encoder = encoder  # compresses the pre-roll (the worker's "pictures" thread)
        self.analysis_id = analysis.pk
        self.source = source
        self.fps = max(analysis.sampling_fps, LIVE_FPS)
        span = CLIP_PRE_S + analysis.incident_open_frames / analysis.sampling_fps + RING_SLACK_S
        self.span_s = min(span, RING_MAX_S)
        size = math.ceil(self.span_s * self.fps) + 2
        self.ring: deque[tuple[float, Future[bytes]]] = deque(maxlen=size)
        self.recordings: dict[int, _Recording] = {}
        self._next_due = 0.0
        self._last_index = -1
        self._last_frame_at = time.monotonic()

    def poll(self, now: float) -> None:
        """Take the camera's newest frame when one is due (once per 1/fps seconds)."""
        if now < self._next_due or self.source is None:
            return
        self._next_due = max(self._next_due + 1.0 / self.fps, now)
        frame = newest_frame(self.source)
        if frame is None or frame.index == self._last_index:
            # A camera gone quiet after an incident closed: its post-roll will not come.
            if now - self._last_frame_at > CLIP_POST_S:
                for recording in [r for r in self.recordings.values() if r.end_s is not None]:
                    self._finish(recording)
            return
        self._last_index, self._last_frame_at = frame.index, now
        # The scores' clock: seconds since the analysis started (loop.Worker._live_frame).
        started = self.analysis.started_at
        if started is None:
            return
        self.frame(frame.image, (frame.captured_at - started).total_seconds())

    def frame(self, image: np.ndarray, time_s: float) -> None:
        """A frame the worker read from the camera (before black-frame and motion checks)."""
        try:
            for recording in list(self.recordings.values()):
                if recording.end_s is not None and time_s > recording.end_s + CLIP_POST_S:
                    self._finish(recording)
                elif not recording.writer.add(shrink(image), time_s) and recording.writer.full:
                    self._finish(recording)
            # The pre-roll is compressed by the encoder thread (OpenCV releases the GIL),
            # not on the loop that feeds the model: ~1.7 ms a frame, for every live camera,
            # to serve the rare incident. One that falls behind skips frames.
            behind = sum(1 for _, jpeg in self.ring if not jpeg.done())
            if behind < RING_MAX_BEHIND:
                self.ring.append((time_s, self.encoder.submit(_ring_jpeg, image)))
            while self.ring and self.ring[0][0] < time_s - self.span_s:
                self.ring.popleft()
        except Exception:
            log.warning("analysis %s: clip frame failed", self.analysis_id, exc_info=True)
            self._drop_all()

    def incident(self, incident: Incident) -> None:
        """An incident opened or closed (after its transaction committed)."""
        try:
            recording = self.recordings.get(incident.pk)
            if not incident.is_open:
                if recording is not None:
                    recording.end_s = incident.end_time_s
                return
            if recording is not None:
                return
            writer = ClipWriter(incident_clip_path(incident.pk), self.fps)
            recording = self.recordings[incident.pk] = _Recording(incident.pk, writer)
            for t, entry in self.ring:
                jpeg = _compressed(entry)
                if t >= incident.start_time_s - CLIP_PRE_S and jpeg:
                    writer.add(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), t)
        except Exception:
            log.warning("incident %s: cannot start its clip", incident.pk, exc_info=True)
            if incident.pk in self.recordings:
                self.recordings.pop(incident.pk).writer.abort()

    def close(self) -> None:
        """The job stops: each clip ends with what it has (an open incident's too)."""
        for recording in list(self.recordings.values()):
            self._finish(recording)
        # The encoder is shared and outlives this job: what it has not started is dropped.
        for _, jpeg in self.ring:
            jpeg.cancel()
        self.ring.clear()

    def _finish(self, recording: _Recording) -> None:
        self.recordings.pop(recording.incident_id, None)
        try:
            stats = recording.writer.finish()
            if stats is not None:
                _forget_if_deleted(recording.incident_id)
                log.info("incident %s: clip written (%s)", recording.incident_id, _describe(stats))
        except Exception:
            log.warning("incident %s: cannot write its clip", recording.incident_id, exc_info=True)

    def _drop_all(self) -> None:
        for recording in self.recordings.values():
            recording.writer.abort()
        self.recordings.clear()


class ClipMaker:
    """The worker's clips: live jobs record their own; file clips go to one background thread."""

    def __init__(self, ring_encoder: ThreadPoolExecutor) -> None:
        self.live: dict[int, LiveClips] = {}
        # One thread compresses every live camera's pre-roll frames (LiveClips.frame); the
        # worker owns it (and shuts it down) and writes the frame ring with it too.
        self._ring_encoder = ring_encoder
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[Future[ClipStats | None], int] = {}
        self._submitted: set[int] = set()

    def attach(self, job: Any) -> None:
        """Set up `job` (a FileJob or LiveJob of detection.worker.loop) for clips."""
        try:
            if getattr(job, "reader", None) is not None:
                source = Path(job.reader.stats.path)
                analysis = job.analysis
                job.recorder.on_incident = lambda i: self._file_incident(analysis, source, i)
                # Incidents a previous run closed without writing their clip (it was stopped).
                for incident in analysis.incidents.filter(end_time_s__isnull=False):
                    if not incident_clip_path(incident.pk).exists():
                        self._file_incident(analysis, source, incident)
            else:
                if job.pk in self.live:
                    self.live.pop(job.pk).close()
                clips = LiveClips(job.analysis, job.source, encoder=self._ring_encoder)
                self.live[job.pk] = clips
                job.recorder.on_incident = clips.incident
        except Exception:
            log.warning("analysis %s: clips disabled", job.pk, exc_info=True)
        self.reap()

    def step(self, jobs: Mapping[int, Any]) -> None:
        """Each tick: feed the live clips, end those of jobs that stopped, log file clips."""
        for pk in [
            pk for pk, c in self.live.items() if getattr(jobs.get(pk), "source", 0) is not c.source
        ]:
            self.live.pop(pk).close()
        now = time.monotonic()
        for clips in self.live.values():
            clips.poll(now)
        if self._pending:
            self.reap()

    def recording(self, analysis_id: int) -> bool:
        """Whether a live job records a clip now (its source then samples at LIVE_FPS at
        least; before an incident, the pre-roll has the frames sampled for scoring)."""
        clips = self.live.get(analysis_id)
        return clips is not None and bool(clips.recordings)

    def _file_incident(self, analysis: Analysis, source: Path, incident: Incident) -> None:
        if incident.is_open or incident.pk in self._submitted:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clips")
        self._submitted.add(incident.pk)
        assert incident.end_time_s is not None
        future = self._executor.submit(
            write_file_clip,
            source,
            incident_clip_path(incident.pk),
            incident.start_time_s - CLIP_PRE_S,
            incident.end_time_s + CLIP_POST_S,
            analysis.sampling_fps,
        )
        self._pending[future] = incident.pk

    def reap(self) -> None:
        """Log the file clips that finished (in this thread: it may query the database)."""
        for future in [f for f in self._pending if f.done()]:
            incident_id = self._pending.pop(future)
            self._submitted.discard(incident_id)
            try:
                stats = future.result()
                if stats is not None:
                    _forget_if_deleted(incident_id)
                    log.info("incident %s: clip written (%s)", incident_id, _describe(stats))
            except MediaError as exc:  # the source cannot be read again: said in one line
                log.warning("incident %s: cannot write its clip: %s", incident_id, exc)
            except Exception:  # a database away, a bug: no clip, and scoring goes on
                log.warning("incident %s: cannot write its clip", incident_id, exc_info=True)

    def shutdown(self) -> None:
        """End the live clips; wait for the file clips under way (seconds), then log them."""
        for clips in self.live.values():
            clips.close()
        self.live.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.reap()
