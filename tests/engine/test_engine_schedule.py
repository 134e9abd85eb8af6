"""The live schedule shared by the worker and analyze_stream (detection/engine/schedule.py)."""

from __future__ import annotations

import numpy as np

from detection.engine.schedule import RETRY_S, RETRY_WINDOW, Ticker
from detection.engine.video import DEFAULT_BLACK_LEVEL, is_black


def test_it_keeps_to_the_schedule_when_on_time():
    ticker = Ticker(interval=0.5, next_due=10.0)
    assert not ticker.due(9.99) and ticker.due(10.0)
    ticker.advance(10.01)
    assert ticker.next_due == 10.5  # not 10.51: a little lateness does not shift the grid


def test_it_skips_missed_ticks_instead_of_catching_up_in_a_burst():
    ticker = Ticker(interval=0.5, next_due=10.0)
    ticker.advance(13.2)  # the scorer was busy for three seconds
    assert ticker.next_due == 13.2
    assert not ticker.due(13.1)


def test_it_asks_again_soon_when_a_tick_finds_no_frame():
    ticker = Ticker(interval=1.0, next_due=10.0)
    ticker.advance(10.0)
    ticker.missed(10.0)  # the frame of this tick lands just after it
    assert ticker.next_due == 10.05
    ticker.advance(10.05)
    # Found: the schedule now follows the frames' phase, an interval after the retry.
    assert ticker.next_due == 11.05


def test_it_gives_up_retrying_half_an_interval_after_the_tick():
    ticker = Ticker(interval=1.0, next_due=10.0)
    asks = []
    now = 10.0
    while now < 12.0:
        asks.append(now)
        ticker.advance(now)
        ticker.missed(now)  # the camera is down: no frame at any ask
        now = ticker.next_due
    retries = [t for t in asks if 10.0 < t < 11.0]
    # Every RETRY_S while within half an interval of the tick, then the next regular tick.
    assert len(retries) >= round(RETRY_WINDOW / RETRY_S) - 1
    assert max(retries) < 10.0 + RETRY_WINDOW + RETRY_S
    regular = [t for t in asks if t >= 11.0]
    assert abs(regular[0] - (max(retries) + 1.0)) < 1e-6
    assert regular[1] - regular[0] < 2 * RETRY_S  # a new tick gets its own retries


def test_it_retries_at_most_a_tenth_of_a_short_interval():
    ticker = Ticker(interval=0.2, next_due=5.0)
    ticker.advance(5.0)
    ticker.missed(5.0)
    assert abs(ticker.next_due - 5.02) < 1e-9


def test_it_calls_a_frame_black_below_the_level_on_any_channel_count():
    dark = np.full((8, 8, 3), DEFAULT_BLACK_LEVEL - 1, np.uint8)
    grey = np.full((8, 8), DEFAULT_BLACK_LEVEL + 1, np.uint8)
    assert is_black(dark) and not is_black(grey)
    assert not is_black(dark, level=DEFAULT_BLACK_LEVEL - 2)
