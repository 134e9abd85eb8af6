"""What the worker keeps for looking at live cameras: the live picture and the frame ring.

The live picture (issue 14, item 8): while a page shows it, the picture view touches a marker
file (`detection.frames.watch_marker_path`) at most once a second. For every live job, the
worker checks the marker's age (one stat per camera per second) and, while it is younger
than WATCH_S, encodes the source's newest frame (the one its reader thread already decoded:
no second connection, no decoding per viewer) at most every INTERVAL_S, at most 640 px wide,
and replaces the picture file atomically. Viewers only read that file, so a camera costs
one encode per interval however many pages show it, and nothing once nobody has looked for
WATCH_S. Workers and web servers share MEDIA_ROOT (as they do for the latest scored frame).

The frame ring (item 7): every scored frame of a live analysis is kept as a small JPEG
named by its frame index, the newest RING_SECONDS at the sampling rate (at most RING_MAX
files), so a click on the live chart can show it. A job that starts (a resume, a re-run)
deletes the frames its stored scores do not cover: a re-run's frame 0 is never an old one.
The ring is written by the worker's "pictures" thread (which also compresses the incident
clips' pre-roll, detection.worker.clips), not on the loop that feeds the model.
Everything here is best effort: a full disk costs a picture, never a score.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from detection.engine.stills import jpeg, newest_frame
from detection.frames import frame_ring_dir, live_picture_path, watch_marker_path, write_atomic

log = logging.getLogger(__name__)

INTERVAL_S = 0.25  # 4 pictures a second while watched
WATCH_S = 10.0  # a page that stopped asking this long ago is gone
CHECK_S = 1.0  # how often the watch marker is looked at, per camera
PICTURE_WIDTH = 640
PICTURE_QUALITY = 75
RING_SECONDS = 600.0  # the last 10 minutes of scored frames
RING_MAX = 1200
RING_WIDTH = 480
RING_QUALITY = 70
RING_MAX_QUEUED = 64  # stored batches waiting for the ring's writer thread


def ring_capacity(sampling_fps: float) -> int:
    return max(1, min(RING_MAX, math.ceil(RING_SECONDS * max(sampling_fps, 0.0))))


def _boxed(image: np.ndarray, box: Any) -> np.ndarray:
    if box is None:
        return image
    frame = image.copy()
    thickness = max(2, frame.shape[1] // 200)
    cv2.rectangle(frame, (box.x0, box.y0), (box.x1 - 1, box.y1 - 1), (0, 0, 255), thickness)
    return frame


class FrameRing:
    """The newest `capacity` scored frames of one live analysis, on disk."""

    def __init__(self, analysis_id: int, capacity: int) -> None:
        self.folder = frame_ring_dir(analysis_id)
        self.capacity = capacity
        self.kept: deque[int] = deque()

    def reset(self, first_unstored: int) -> None:
        """Forget frames at or after `first_unstored` (another run's) and pick up the rest."""
        indexes = []
        try:
            names = list(self.folder.iterdir())
        except FileNotFoundError:
            names = []
        for path in names:
            stem = path.stem if path.suffix == ".jpg" else ""
            if not stem.isdigit() or int(stem) >= first_unstored:
                path.unlink(missing_ok=True)
            else:
                indexes.append(int(stem))
        self.kept = deque(sorted(indexes))
        self._trim()

    def add(self, items: Iterable[Any]) -> None:
        """Items just stored (`recording.ScoredItem`, in order)."""
        try:
            for item in items:
                data = jpeg(_boxed(item.image, item.box), RING_WIDTH, RING_QUALITY)
                if data:
                    write_atomic(self.folder / f"{int(item.frame_index)}.jpg", data)
                    self.kept.append(int(item.frame_index))
            self._trim()
        except OSError as exc:
            log.warning("cannot keep scored frames in %s: %s", self.folder, exc)

    def _trim(self) -> None:
        while len(self.kept) > self.capacity:
            (self.folder / f"{self.kept.popleft()}.jpg").unlink(missing_ok=True)


def _keep(ring: FrameRing, items: list[Any]) -> None:
    try:
        ring.add(items)
    except Exception:  # a bug, a frame OpenCV refuses: said, and the next batch tries again
        log.warning("cannot keep scored frames in %s", ring.folder, exc_info=True)


@dataclass
class _Camera:
    analysis_id: int
    source: Any
    ring: FrameRing
    watched: bool = False
    checked_at: float = -math.inf  # monotonic time the marker was last looked at
    next_due: float = 0.0  # monotonic time the next picture may be written
    last_index: int = -1  # the source frame the picture shows
    written: int = 0


@dataclass
class LivePictures:
    """The live picture and frame ring of each live job of one worker."""

    # The rings are written by one thread (the worker's, shared with the clips' pre-roll):
    # compressing a scored frame costs ~1-2 ms, paid for every live camera, on the loop that
    # feeds the model otherwise. A click on the chart for a frame stored a moment ago may
    # find it a moment later. The worker shuts it down.
    writer: ThreadPoolExecutor
    interval_s: float = INTERVAL_S
    watch_s: float = WATCH_S
    cameras: dict[int, _Camera] = field(default_factory=dict)
    _queued: list[Future[None]] = field(default_factory=list)
    _behind: bool = False

    def start(self, analysis_id: int, source: Any, sampling_fps: float, next_index: int) -> None:
        ring = FrameRing(analysis_id, ring_capacity(sampling_fps))
        try:
            ring.reset(next_index)
        except OSError as exc:
            log.warning("analysis %s: cannot tidy its kept frames: %s", analysis_id, exc)
        self.cameras[analysis_id] = _Camera(analysis_id, source, ring)

    def stop(self, analysis_id: int) -> None:
        self.cameras.pop(analysis_id, None)

    def stored(self, analysis_id: int, items: list[Any]) -> None:
        camera = self.cameras.get(analysis_id)
        if camera is None:
            return
        self._queued = [f for f in self._queued if not f.done()]
        if len(self._queued) >= RING_MAX_QUEUED:
            if not self._behind:  # said once per stretch, not once per frame
                log.warning("the frame rings' writer is behind: scored frames are not kept")
            self._behind = True
            return
        self._behind = False
        self._queued.append(self.writer.submit(_keep, camera.ring, list(items)))

    def close(self) -> None:
        """Write what is queued for the rings (the worker stops)."""
        wait(self._queued)
        self._queued.clear()

    def step(self, active: Collection[int], now: float | None = None) -> int:
        """Write the pictures that are due; returns how many were written. Jobs no longer
        `active` (dropped, stopped, taken over) are forgotten."""
        now = time.monotonic() if now is None else now
        for gone in set(self.cameras) - set(active):
            del self.cameras[gone]
        written = 0
        for camera in self.cameras.values():
            if now - camera.checked_at >= CHECK_S:
                camera.checked_at = now
                camera.watched = self._watched(camera.analysis_id)
            if not camera.watched or now < camera.next_due:
                continue
            frame = newest_frame(camera.source)
            if frame is None or frame.index == camera.last_index:
                # Nothing new (a stalled camera): look again soon, never in a busy loop.
                camera.next_due = now + self.interval_s / 2
                continue
            # On schedule (4 a second, not 4 a second plus the loop's lateness), never a burst.
            camera.next_due = max(camera.next_due + self.interval_s, now + self.interval_s / 2)
            data = jpeg(frame.image, PICTURE_WIDTH, PICTURE_QUALITY)
            if not data:
                continue
            try:
                write_atomic(live_picture_path(camera.analysis_id), data)
            except OSError as exc:
                log.warning(
                    "analysis %s: cannot write the live picture: %s", camera.analysis_id, exc
                )
                continue
            camera.last_index = frame.index
            camera.written += 1
            written += 1
        return written

    def watched(self, analysis_id: int) -> bool:
        """Whether a page shows this job's live picture now (its source then samples at
        least every `interval_s`: detection.worker.loop, decoding less)."""
        camera = self.cameras.get(analysis_id)
        return camera is not None and camera.watched

    def next_due(self) -> float | None:
        """When a watched camera's next picture is due (monotonic), None when none is watched."""
        due = [c.next_due for c in self.cameras.values() if c.watched]
        return min(due) if due else None

    def _watched(self, analysis_id: int) -> bool:
        try:
            age = time.time() - watch_marker_path(analysis_id).stat().st_mtime
        except OSError:
            return False
        return age < self.watch_s


def delete_files(analysis_id: int) -> None:
    """Everything kept on disk for looking at an analysis (it was deleted)."""
    shutil.rmtree(frame_ring_dir(analysis_id), ignore_errors=True)
    for path in (live_picture_path(analysis_id), watch_marker_path(analysis_id)):
        path.unlink(missing_ok=True)
