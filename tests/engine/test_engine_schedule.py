"""The live schedule shared by the worker and analyze_stream (detection/engine/schedule.py)."""

from __future__ import annotations

import numpy as np

from detection.engine.schedule import Ticker
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


def test_it_calls_a_frame_black_below_the_level_on_any_channel_count():
    dark = np.full((8, 8, 3), DEFAULT_BLACK_LEVEL - 1, np.uint8)
    grey = np.full((8, 8), DEFAULT_BLACK_LEVEL + 1, np.uint8)
    assert is_black(dark) and not is_black(grey)
    assert not is_black(dark, level=DEFAULT_BLACK_LEVEL - 2)
