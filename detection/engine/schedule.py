"""When a live camera's next frame is due: one schedule for the worker and `analyze_stream`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ticker:
    """Due every `interval` seconds (monotonic clock), on a fixed schedule.

    A slow scorer skips ticks rather than owing them: after a late tick the next one is
    due an interval later or now, whichever is later, so it never catches up in a burst
    (which would score a run of near-identical frames).
    """

    interval: float
    next_due: float

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def advance(self, now: float) -> None:
        self.next_due = max(self.next_due + self.interval, now)
