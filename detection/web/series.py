"""The score time series of a finished analysis, thinned for display.

A browser draws a few thousand points comfortably; a long video at a high sampling rate has
hundreds of thousands. Above `max_points` the series is cut into buckets of consecutive
scores and each bucket keeps its lowest and its highest score (in frame order), so spikes
and dips survive and the overall peak is always kept. Exports never use this: they stream
every stored score.
"""

from __future__ import annotations

import math
from typing import Any

from detection.models import Analysis, FrameScore

MAX_POINTS = 2000
CHUNK_SIZE = 5000

Point = dict[str, Any]
Row = tuple[int, float, float, bool, float | None, float | None]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _point(
    frame_index: int,
    time_s: float,
    score: float,
    learning: bool = False,
    prompt_score: float | None = None,
    novelty: float | None = None,
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
    return point


def display_series(analysis: Analysis, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """{"points": [{"i", "t", "s", "l"?, "p"?, "n"?}...], "total", "decimated", "peak"}
    for json_script. The peak is never a learning frame (those are not judged)."""
    scores = FrameScore.objects.filter(analysis=analysis).order_by("frame_index")
    total = scores.count()
    rows = scores.values_list(
        "frame_index", "time_s", "score", "learning", "prompt_score", "novelty"
    ).iterator(chunk_size=CHUNK_SIZE)
    # Two points per bucket: the bucket's minimum and maximum.
    per_bucket = max(1, math.ceil(total / max(1, max_points // 2)))
    decimated = total > max_points
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
    return {"points": points, "total": total, "decimated": decimated, "peak": peak}
