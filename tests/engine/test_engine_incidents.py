from __future__ import annotations

import numpy as np

from detection.engine.incidents import IncidentTracker, Smoother
from detection.engine.motion import MotionGate


def run(tracker: IncidentTracker, scores: list[float]) -> list[tuple[str, int]]:
    events = []
    for i, s in enumerate(scores):
        events += [(e.kind, i) for e in tracker.feed(s, float(i), i) if e.kind != "peak"]
    return events


def test_it_opens_after_k_consecutive_frames_and_starts_at_the_first():
    tracker = IncidentTracker(threshold=0.6, open_after=3, close_after=2)
    assert run(tracker, [0.7, 0.7, 0.2, 0.7, 0.8, 0.65]) == [("opened", 5)]
    assert tracker.current.start_time_s == 3.0
    assert (tracker.current.peak_score, tracker.current.peak_frame_index) == (0.8, 4)


def test_it_closes_only_below_the_hysteresis_line():
    tracker = IncidentTracker(threshold=0.6, hysteresis=0.1, open_after=1, close_after=2)
    # 0.55 lies between 0.5 and 0.6: neither anomalous nor enough to close.
    events = run(tracker, [0.9, 0.55, 0.55, 0.55, 0.4, 0.55, 0.4, 0.4])
    assert events == [("opened", 0), ("closed", 7)]


def test_it_tracks_the_peak_while_open():
    tracker = IncidentTracker(threshold=0.5, open_after=1, close_after=1)
    peaks = [
        e
        for i, s in enumerate([0.6, 0.9, 0.7, 0.95])
        for e in tracker.feed(s, i, i)
        if e.kind == "peak"
    ]
    assert [e.incident.peak_score for e in peaks] == [0.9, 0.95]
    assert tracker.current.peak_time_s == 3


def test_it_opens_again_after_closing():
    tracker = IncidentTracker(threshold=0.6, hysteresis=0.0, open_after=2, close_after=2)
    events = run(tracker, [0.7, 0.7, 0.1, 0.1, 0.7, 0.7])
    assert events == [("opened", 1), ("closed", 3), ("opened", 5)]


def test_it_smooths_with_a_moving_average():
    smooth = Smoother(3)
    assert [smooth(s) for s in [0.0, 0.3, 0.6, 0.9]] == [0.0, 0.15, 0.3, 0.6]
    assert Smoother(1)(0.42) == 0.42


def test_it_gates_still_frames_but_rescores_on_schedule():
    gate = MotionGate(threshold=2.0, rescore_interval_s=3.0)
    still = np.full((240, 320, 3), 100, np.uint8)
    moved = still.copy()
    moved[50:150, 50:150] = 255
    decisions = [
        gate.should_score(f, t)
        for f, t in [
            (still, 0.0),
            (still, 1.0),
            (still, 2.0),
            (moved, 2.5),
            (moved, 3.0),
            (moved, 5.6),
        ]
    ]
    assert decisions == [True, False, False, True, False, True]
