"""Motion gating: skip scoring a live frame that did not change, but not for too long.

A fixed camera watching an empty scene produces near-identical frames; scoring each costs a
full CLIP forward pass for nothing. A frame is scored when it differs from the last scored
frame (mean absolute difference of small greyscale thumbnails above `threshold`, in 0-255
units) or when `rescore_interval_s` has passed since the last score (the prototype's forced
re-score every 3 s), so slow changes such as light or a still intruder are still caught.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = (64, 48)


def thumbnail(frame_bgr: np.ndarray) -> np.ndarray:
    small = cv2.resize(frame_bgr, THUMB, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.int16)


class MotionGate:
    def __init__(self, threshold: float = 2.0, rescore_interval_s: float = 3.0) -> None:
        self.threshold = threshold
        self.rescore_interval_s = rescore_interval_s
        self._last: np.ndarray | None = None
        self._last_time: float | None = None

    def should_score(self, frame_bgr: np.ndarray, time_s: float) -> bool:
        thumb = thumbnail(frame_bgr)
        due = self._last_time is None or time_s - self._last_time >= self.rescore_interval_s
        moved = self._last is None or float(np.abs(thumb - self._last).mean()) > self.threshold
        if due or moved:
            self._last, self._last_time = thumb, time_s
            return True
        return False
