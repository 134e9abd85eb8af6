"""CSV and JSON exports of every stored score, streamed.

A day of live scores is ~86,400 rows per analysis at 1 fps, so nothing here builds the whole
export in memory: rows come from the database in chunks (`.iterator()`) as plain tuples
(`values_list`, no model instances) and leave as the response is written.

Scores older than the retention (detection/retention.py) survive only as per-minute
rollups: scores.json carries them in its `rollups` list (before `scores`, which holds the
raw scores still stored); scores.csv?rollups=1 is the same list as a CSV of its own.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404

from detection.access import visible_analyses
from detection.models import Analysis, FrameScore, ScoreRollup

# Rows fetched from the database per round trip.
CHUNK_SIZE = 2000
# Rows joined into one piece of the response: fewer, larger writes than one per row.
ROWS_PER_PIECE = 500

COLUMNS = (*FrameScore.SCORE_FIELDS, "label", *FrameScore.BOX_FIELDS)
# One rolled-up minute: `minute` = floor(time_s / 60); `above` = judged frames at or above
# `threshold` (the one in use when it was rolled up); `learning` = frames learned as normal.
ROLLUP_COLUMNS = (
    "minute",
    "first_frame_index",
    "last_frame_index",
    "start_time_s",
    "end_time_s",
    "first_captured_at",
    "last_captured_at",
    "count",
    "min_score",
    "mean_score",
    "max_score",
    "above",
    "learning",
    "threshold",
)
_ROLLUP_FIELDS = (*(c for c in ROLLUP_COLUMNS if c != "mean_score"), "sum_score")
# The stored fields, in COLUMNS order, without the computed label.
_FIELDS = (*FrameScore.SCORE_FIELDS, *FrameScore.BOX_FIELDS)

Row = tuple[Any, ...]


class _Echo:
    """A file-like object whose write() hands back what it is given (Django docs' pattern)."""

    def write(self, value: str) -> str:
        return value


class _AsyncPieces:
    """Serves a sync generator to an ASGI server one piece at a time.

    Under ASGI (daphne's runserver, uvicorn) Django would consume a sync iterator with
    `sync_to_async(list)`, i.e. build the whole export in memory first. Pulling each piece
    on the request's own sync thread keeps the streaming and the database cursor's thread.
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self._next = sync_to_async(next, thread_sensitive=True)

    def __aiter__(self) -> _AsyncPieces:
        return self

    async def __anext__(self) -> str:
        piece = await self._next(self._pieces, None)
        if piece is None:
            raise StopAsyncIteration
        return piece

    def close(self) -> None:
        # StreamingHttpResponse.close() calls this: stop the query if the client left early.
        self._pieces.close()


def _visible_analysis(request: HttpRequest, pk: int) -> Analysis:
    # Checked before the response starts: a hidden analysis is a 404, not an empty file.
    return get_object_or_404(visible_analyses(request.user).select_related("camera"), pk=pk)


_SCORE = FrameScore.SCORE_FIELDS.index("score")
_LEARNING = FrameScore.SCORE_FIELDS.index("learning")
_N_SCORE_FIELDS = len(FrameScore.SCORE_FIELDS)
# Numbers that may be NaN or infinite in a broken row: JSON gets null for them.
_NUMBERS = (
    "time_s",
    "score",
    "normal_similarity",
    "anomaly_similarity",
    "prompt_score",
    "novelty",
)


def label(score: float, learning: bool, threshold: float) -> str:
    """Learning frames were learned as normal and never judged; the rest against the
    threshold in use (the automatic one, once derived)."""
    if learning:
        return "Learning"
    return "Anomaly" if score >= threshold else "Normal"


def _rows(analysis: Analysis) -> Iterator[Row]:
    """(frame_index, ..., label, box...) per stored score, in frame order, chunk by chunk."""
    queryset = (
        FrameScore.objects.filter(analysis=analysis).order_by("frame_index").values_list(*_FIELDS)
    )
    threshold = analysis.threshold_in_use
    for row in queryset.iterator(chunk_size=CHUNK_SIZE):
        fields, box = row[:_N_SCORE_FIELDS], row[_N_SCORE_FIELDS:]
        yield (*fields, label(fields[_SCORE], fields[_LEARNING], threshold), *box)


def _rollups(analysis: Analysis) -> Iterator[dict[str, Any]]:
    """Rolled-up minutes in ROLLUP_COLUMNS order, oldest first."""
    queryset = (
        ScoreRollup.objects.filter(analysis=analysis).order_by("minute").values(*_ROLLUP_FIELDS)
    )
    if not queryset.exists():  # most analyses: no cursor at all
        return
    for row in queryset.iterator(chunk_size=CHUNK_SIZE):
        total = row.pop("sum_score")
        row["mean_score"] = total / row["count"] if row["count"] else None
        row["first_captured_at"] = _iso(row["first_captured_at"])
        row["last_captured_at"] = _iso(row["last_captured_at"])
        for key in ("min_score", "mean_score", "max_score", "threshold"):
            row[key] = _number(row[key])
        yield {key: row[key] for key in ROLLUP_COLUMNS}


def _pieces(lines: Iterator[str]) -> Iterator[str]:
    """Lines joined ROWS_PER_PIECE at a time; closing this closes `lines` (and its cursor)."""
    try:
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) >= ROWS_PER_PIECE:
                yield "".join(batch)
                batch = []
        if batch:
            yield "".join(batch)
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: float | None) -> float | None:
    # NaN and infinities are not JSON; a broken score must not break the whole document.
    if value is None or not math.isfinite(value):
        return None
    return value


def _stream(
    request: HttpRequest, lines: Iterator[str], content_type: str, filename: str
) -> StreamingHttpResponse:
    pieces = _pieces(lines)
    content = _AsyncPieces(pieces) if isinstance(request, ASGIRequest) else pieces
    response = StreamingHttpResponse(content, content_type=content_type)
    # The filename is built from the integer id only: nothing user-typed reaches the header.
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def _csv_lines(analysis: Analysis) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for row in _rows(analysis):
        captured_at = row[2]
        yield writer.writerow((*row[:2], _iso(captured_at) or "", *row[3:]))


def _rollup_csv_lines(analysis: Analysis) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(ROLLUP_COLUMNS)
    for row in _rollups(analysis):
        yield writer.writerow(["" if v is None else v for v in row.values()])


def _json_lines(analysis: Analysis) -> Iterator[str]:
    header = {
        "id": analysis.pk,
        "name": analysis.name,
        "camera": analysis.camera.name,
        "threshold": analysis.threshold,
        "threshold_in_use": analysis.threshold_in_use,
        "auto_threshold": analysis.auto_threshold,
        "mode": analysis.mode,
        "learning_seconds": analysis.learning_seconds,
        "sampling_fps": analysis.sampling_fps,
        "status": analysis.status,
        "normal_prompts": analysis.prompt_list("normal"),
        "anomaly_prompts": analysis.prompt_list("anomaly"),
    }
    yield '{"analysis": ' + json.dumps(header) + ', "rollups": ['
    separator = "\n"
    for rollup in _rollups(analysis):
        yield separator + json.dumps(rollup, allow_nan=False)
        separator = ",\n"
    yield '\n], "scores": ['
    separator = "\n"
    for row in _rows(analysis):
        item = dict(zip(COLUMNS, row, strict=True))
        item["captured_at"] = _iso(item["captured_at"])
        for key in _NUMBERS:
            item[key] = _number(item[key])
        yield separator + json.dumps(item, allow_nan=False)
        separator = ",\n"
    yield "\n]}\n"


@login_required
def scores_csv(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    analysis = _visible_analysis(request, pk)
    if request.GET.get("rollups") == "1":
        return _stream(
            request,
            _rollup_csv_lines(analysis),
            "text/csv; charset=utf-8",
            f"analysis-{analysis.pk}-rollups.csv",
        )
    return _stream(
        request,
        _csv_lines(analysis),
        "text/csv; charset=utf-8",
        f"analysis-{analysis.pk}-scores.csv",
    )


@login_required
def scores_json(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    analysis = _visible_analysis(request, pk)
    return _stream(
        request, _json_lines(analysis), "application/json", f"analysis-{analysis.pk}-scores.json"
    )
