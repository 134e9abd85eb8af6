"""Turning a stream of scores into incidents, with hysteresis.

An incident opens after `open_after` consecutive (smoothed) scores at or above the
threshold and closes after `close_after` consecutive scores below `threshold - hysteresis`.
Scores between the two lines neither open nor close anything, so a score hovering around
the threshold does not flap. Pure logic: the worker stores what it reports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace


@dataclass
class OpenIncident:
    start_time_s: float
    start_frame_index: int
    peak_score: float
    peak_time_s: float
    peak_frame_index: int


@dataclass(frozen=True)
class IncidentEvent:
    kind: str  # "opened", "peak" (a new peak while open) or "closed"
    incident: OpenIncident  # a snapshot: later scores do not change it
    time_s: float  # when it happened
    frame_index: int


class Smoother:
    """Moving average over the last `window` scores (window 1 = the score itself)."""

    def __init__(self, window: int = 1) -> None:
        self._scores: deque[float] = deque(maxlen=max(1, window))

    def __call__(self, score: float) -> float:
        self._scores.append(score)
        return sum(self._scores) / len(self._scores)


@dataclass
class IncidentTracker:
    threshold: float
    hysteresis: float = 0.05
    open_after: int = 3
    close_after: int = 5
    current: OpenIncident | None = None
    _above: int = field(default=0, repr=False)
    _below: int = field(default=0, repr=False)
    _run_start: tuple[float, int] | None = field(default=None, repr=False)
    _run_peak: tuple[float, float, int] | None = field(default=None, repr=False)

    def feed(self, score: float, time_s: float, frame_index: int) -> list[IncidentEvent]:
        """Feed one (smoothed) score; return what changed."""
        if self.current is None:
            return self._while_closed(score, time_s, frame_index)
        return self._while_open(score, time_s, frame_index)

    def _while_closed(self, score: float, time_s: float, index: int) -> list[IncidentEvent]:
        if score < self.threshold:
            self._above, self._run_start, self._run_peak = 0, None, None
            return []
        if self._above == 0:
            self._run_start = (time_s, index)
        self._above += 1
        if self._run_peak is None or score > self._run_peak[0]:
            self._run_peak = (score, time_s, index)
        if self._above < self.open_after:
            return []
        # The incident starts where the run above the threshold started, not where it was
        # confirmed: the operator wants to see the first anomalous frame.
        assert self._run_start is not None and self._run_peak is not None
        self.current = OpenIncident(
            start_time_s=self._run_start[0],
            start_frame_index=self._run_start[1],
            peak_score=self._run_peak[0],
            peak_time_s=self._run_peak[1],
            peak_frame_index=self._run_peak[2],
        )
        self._above, self._below = 0, 0
        return [IncidentEvent("opened", replace(self.current), time_s, index)]

    def _while_open(self, score: float, time_s: float, index: int) -> list[IncidentEvent]:
        assert self.current is not None
        events = []
        if score > self.current.peak_score:
            self.current.peak_score, self.current.peak_time_s = score, time_s
            self.current.peak_frame_index = index
            events.append(IncidentEvent("peak", replace(self.current), time_s, index))
        if score < self.threshold - self.hysteresis:
            self._below += 1
        else:
            self._below = 0
        if self._below >= self.close_after:
            closed, self.current = self.current, None
            self._below, self._run_start, self._run_peak = 0, None, None
            events.append(IncidentEvent("closed", closed, time_s, index))
        return events
