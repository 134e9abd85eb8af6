"""The score time series of a finished analysis, thinned for display.

A browser draws a few thousand points comfortably; a long video at a high sampling rate has
hundreds of thousands. Above `max_points` the series is cut into buckets of consecutive
scores and each bucket keeps its lowest and its highest score (in frame order), so spikes
and dips survive and the overall peak is always kept. Exports never use this: they stream
every stored score.

Scores that retention rolled up (detection/retention.py) come first, as two points per
minute (its lowest and highest score, both at the minute's first frame, marked `r`), so a
long chart still shows the pruned range; `rolled_up` counts the scores they stand for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import chain
from typing import Any

from django.db.models import Sum

from detection.models import Analysis, FrameScore, ScoreRollup

MAX_POINTS = 2000
CHUNK_SIZE = 5000

Point = dict[str, Any]
# (frame_index, time_s, score, learning, prompt_score, novelty[, rolled up])
Row = tuple[Any, ...]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _point(
    frame_index: int,
    time_s: float,
    score: float,
    learning: bool = False,
    prompt_score: float | None = None,
    novelty: float | None = None,
    rolled_up: bool = False,
) -> Point:
    """A chart point; `l` (learned as normal, never judged), `p` (the prompts' score) and
    `n` (novelty) only where they apply, to keep the page small."""
    point: Point = {"i": frame_index, "t": time_s, "s": score}
    if learning:
        point["l"] = True
    if _finite(prompt_score) is not None:
        point["p"] = prompt_score
    if _finite(novelty) is not None:
        point["n"] = novelty
    if rolled_up:
        point["r"] = True
    return point


def _rollup_rows(analysis: Analysis) -> Iterator[Row]:
    """Each rolled-up minute as two rows (lowest, highest); `learning` is True where the
    minute held learning frames, so its highest score is never taken for the peak."""
    minutes = (
        ScoreRollup.objects.filter(analysis=analysis)
        .order_by("minute")
        .values_list("first_frame_index", "start_time_s", "min_score", "max_score", "learning")
    )
    for index, time_s, low, high, learning in minutes.iterator(chunk_size=CHUNK_SIZE):
        yield (index, time_s, low, bool(learning), None, None, True)
        yield (index, time_s, high, bool(learning), None, None, True)


def display_series(analysis: Analysis, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """{"points": [{"i", "t", "s", "l"?, "p"?, "n"?, "r"?}...], "total", "decimated",
    "peak", "rolled_up"} for json_script. The peak is never a learning frame (those are not
    judged)."""
    scores = FrameScore.objects.filter(analysis=analysis).order_by("frame_index")
    raw = scores.count()
    rollups = ScoreRollup.objects.filter(analysis=analysis)
    minutes = rollups.count()
    rolled_up = (rollups.aggregate(n=Sum("count"))["n"] or 0) if minutes else 0
    total = raw + rolled_up
    rows = chain(
        _rollup_rows(analysis) if minutes else (),
        scores.values_list(
            "frame_index", "time_s", "score", "learning", "prompt_score", "novelty"
        ).iterator(chunk_size=CHUNK_SIZE),
    )
    # Two points per bucket: the bucket's minimum and maximum.
    drawn = raw + 2 * minutes
    per_bucket = max(1, math.ceil(drawn / max(1, max_points // 2)))
    decimated = drawn > max_points
    points: list[Point] = []
    peak: Point | None = None
    bucket: list[Row] = []

    def flush() -> None:
        if not bucket:
            return
        low = min(bucket, key=lambda r: r[2])
        high = max(bucket, key=lambda r: r[2])
        for row in sorted({low, high}, key=lambda r: r[0]):
            points.append(_point(*row))
        bucket.clear()

    for row in rows:
        if not math.isfinite(row[2]):
            continue  # NaN is not JSON and not a score worth drawing
        if not row[3] and (peak is None or row[2] > peak["s"]):
            peak = _point(*row)
        if not decimated:
            points.append(_point(*row))
            continue
        bucket.append(row)
        if len(bucket) >= per_bucket:
            flush()
    flush()
    return {
        "points": points,
        "total": total,
        "decimated": decimated,
        "peak": peak,
        "rolled_up": rolled_up,
    }
