"""When a live camera's next frame is due: one schedule for the worker and `analyze_stream`."""

from __future__ import annotations

from dataclasses import dataclass, field

# A tick that finds no new frame asks again every RETRY_S (at most a tenth of the interval)
# until RETRY_WINDOW of an interval has passed since the tick (`Ticker.missed`).
RETRY_S = 0.05
RETRY_WINDOW = 0.5


@dataclass
class Ticker:
    """Due every `interval` seconds (monotonic clock), on a fixed schedule.

    A slow scorer skips ticks rather than owing them: after a late tick the next one is
    due an interval later or now, whichever is later, so it never catches up in a burst
    (which would score a run of near-identical frames).

    A tick that finds no new frame (`missed`) is asked again shortly, for half an interval:
    where frames come once an interval (keyframes only, a GOP as long as the interval), one
    lands just after the tick as often as just before, and waiting a whole interval would
    lose that sample. The schedule then follows the frames' own phase. A camera that is
    down gets the next tick as before.
    """

    interval: float
    next_due: float
    # The tick the current ask belongs to, and the one being retried (None: not retrying).
    _asked: float = field(default=0.0, repr=False)
    _retrying: float | None = field(default=None, repr=False)

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def advance(self, now: float) -> None:
        """The due tick is being served: schedule the next one."""
        self._asked = self._retrying if self._retrying is not None else self.next_due
        self._retrying = None
        self.next_due = max(self.next_due + self.interval, now)

    def missed(self, now: float) -> None:
        """The tick just served found no new frame: ask again soon while within the window."""
        if now - self._asked < RETRY_WINDOW * self.interval:
            self._retrying = self._asked
            self.next_due = now + min(RETRY_S, self.interval / 10)
