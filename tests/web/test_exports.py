"""scores.csv and scores.json: every stored score, in frame order, streamed."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from django.db.models.query import QuerySet
from django.http import StreamingHttpResponse
from django.test import AsyncRequestFactory, RequestFactory
from django.urls import reverse

from detection.models import FrameScore
from detection.web import exports
from tests.support.factories import AnalysisFactory, FrameScoreFactory

HEADER = [
    "frame_index",
    "time_s",
    "captured_at",
    "score",
    "normal_similarity",
    "anomaly_similarity",
    "prompt_score",
    "novelty",
    "learning",
    "label",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
]

CAPTURED = "2025-05-01T12:00:00+00:00"
NO_BOX = ["", "", "", ""]


@pytest.fixture
def stored(viewer):
    """An analysis shared with `viewer`, whose scores were stored out of frame order."""
    analysis = AnalysisFactory(
        name="Gate",
        threshold=0.5,
        sampling_fps=2.0,
        camera__viewers=[viewer],
        normal_prompts="a closed gate\n  \nan empty yard",
        anomaly_prompts="a person climbing",
    )
    # Stored out of order, with a score exactly at the threshold and one localised box.
    FrameScoreFactory(
        analysis=analysis,
        frame_index=20,
        time_s=10.0,
        score=0.9,
        normal_similarity=0.1,
        anomaly_similarity=0.3,
        box_x0=0,
        box_y0=0,
        box_x1=80,
        box_y1=60,
    )
    FrameScoreFactory(
        analysis=analysis,
        frame_index=0,
        time_s=0.0,
        score=0.1,
        captured_at=datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC),
    )
    FrameScoreFactory(analysis=analysis, frame_index=10, time_s=5.0, score=0.5)
    # Another analysis's scores must not leak in.
    FrameScoreFactory(analysis=AnalysisFactory(camera=analysis.camera), frame_index=5)
    return analysis


def _body(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


def test_it_exports_exactly_the_stored_scores_as_csv_in_frame_order(client, viewer, stored):
    client.force_login(viewer)
    response = client.get(reverse("detection:scores_csv", args=[stored.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="analysis-{stored.pk}-scores.csv"'
    )
    assert response["Cache-Control"] == "no-store"
    rows = list(csv.reader(io.StringIO(_body(response))))
    assert rows == [
        HEADER,
        ["0", "0.0", CAPTURED, "0.1", "0.25", "0.24", "", "", "False", "Normal", *NO_BOX],
        ["10", "5.0", "", "0.5", "0.25", "0.24", "", "", "False", "Anomaly", *NO_BOX],
        ["20", "10.0", "", "0.9", "0.1", "0.3", "", "", "False", "Anomaly", "0", "0", "80", "60"],
    ]


def test_it_exports_exactly_the_stored_scores_as_json_in_frame_order(client, viewer, stored):
    client.force_login(viewer)
    response = client.get(reverse("detection:scores_json", args=[stored.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == (
        f'attachment; filename="analysis-{stored.pk}-scores.json"'
    )
    assert response["Cache-Control"] == "no-store"
    document = json.loads(_body(response))
    assert document["analysis"] == {
        "id": stored.pk,
        "name": "Gate",
        "camera": stored.camera.name,
        "threshold": 0.5,
        "threshold_in_use": 0.5,
        "auto_threshold": False,
        "mode": "prompts",
        "learning_seconds": 0.0,
        "sampling_fps": 2.0,
        "status": "draft",
        "normal_prompts": ["a closed gate", "an empty yard"],
        "anomaly_prompts": ["a person climbing"],
    }
    scores = document["scores"]
    assert [s["frame_index"] for s in scores] == [0, 10, 20]
    assert [s["label"] for s in scores] == ["Normal", "Anomaly", "Anomaly"]
    assert scores[0] == {
        "frame_index": 0,
        "time_s": 0.0,
        "captured_at": "2025-05-01T12:00:00+00:00",
        "score": 0.1,
        "normal_similarity": 0.25,
        "anomaly_similarity": 0.24,
        "prompt_score": None,
        "novelty": None,
        "learning": False,
        "label": "Normal",
        "box_x0": None,
        "box_y0": None,
        "box_x1": None,
        "box_y1": None,
    }
    assert [scores[2][k] for k in ("box_x0", "box_y0", "box_x1", "box_y1")] == [0, 0, 80, 60]


@pytest.mark.parametrize("name", ["scores_csv", "scores_json"])
def test_it_exports_what_went_into_each_score_and_labels_learning_frames(client, viewer, name):
    """prompt_score, novelty and learning per frame; learning frames are never judged, the
    rest against the threshold in use (here the automatic one the worker derived)."""
    analysis = AnalysisFactory(
        camera__viewers=[viewer],
        threshold=0.9,
        mode="combined",
        learning_seconds=10,
        auto_threshold=True,
        metadata={"anomaly_threshold": 0.4, "auto_threshold": 0.4},
    )
    FrameScoreFactory(analysis=analysis, frame_index=0, time_s=0.0, score=0.95, learning=True)
    FrameScoreFactory(
        analysis=analysis, frame_index=1, time_s=11.0, score=0.5, prompt_score=0.2, novelty=0.5
    )
    FrameScoreFactory(
        analysis=analysis, frame_index=2, time_s=12.0, score=0.3, prompt_score=0.3, novelty=0.1
    )
    client.force_login(viewer)
    body = _body(client.get(reverse(f"detection:{name}", args=[analysis.pk])))
    if name == "scores_csv":
        rows = list(csv.DictReader(io.StringIO(body)))
        values = [(r["prompt_score"], r["novelty"], r["learning"], r["label"]) for r in rows]
        assert values == [
            ("", "", "True", "Learning"),
            ("0.2", "0.5", "False", "Anomaly"),
            ("0.3", "0.1", "False", "Normal"),
        ]
    else:
        document = json.loads(body)
        header = document["analysis"]
        assert (header["threshold"], header["threshold_in_use"]) == (0.9, 0.4)
        assert (header["mode"], header["learning_seconds"], header["auto_threshold"]) == (
            "combined",
            10.0,
            True,
        )
        values = [
            (s["prompt_score"], s["novelty"], s["learning"], s["label"]) for s in document["scores"]
        ]
        assert values == [
            (None, None, True, "Learning"),
            (0.2, 0.5, False, "Anomaly"),
            (0.3, 0.1, False, "Normal"),
        ]


@pytest.mark.parametrize("name", ["scores_csv", "scores_json"])
def test_it_exports_an_analysis_without_scores(client, viewer, name):
    analysis = AnalysisFactory(camera__viewers=[viewer])
    client.force_login(viewer)
    body = _body(client.get(reverse(f"detection:{name}", args=[analysis.pk])))
    if name == "scores_csv":
        assert list(csv.reader(io.StringIO(body))) == [HEADER]
    else:
        document = json.loads(body)
        assert document["scores"] == []
        assert document["analysis"]["id"] == analysis.pk


@pytest.mark.parametrize("name", ["scores_csv", "scores_json"])
def test_it_streams_a_large_export_in_chunks(client, viewer, monkeypatch, name):
    analysis = AnalysisFactory(camera__viewers=[viewer], threshold=0.6)
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=analysis,
            frame_index=i,
            time_s=i / 2,
            score=(i % 10) / 10,
            normal_similarity=0.2,
            anomaly_similarity=0.2,
        )
        for i in range(5000)
    )
    # Spy on QuerySet.iterator: the rows must come from a chunked cursor, not a list.
    calls: list[int | None] = []
    real_iterator = QuerySet.iterator

    def spy(self, chunk_size=None):
        calls.append(chunk_size)
        return real_iterator(self, chunk_size=chunk_size)

    monkeypatch.setattr(QuerySet, "iterator", spy)
    client.force_login(viewer)
    response = client.get(reverse(f"detection:{name}", args=[analysis.pk]))
    assert isinstance(response, StreamingHttpResponse)
    assert response.streaming
    # Nothing has been read from the database yet: the query runs as the body is sent.
    assert calls == []
    pieces = [piece.decode() for piece in response.streaming_content]
    assert calls == [exports.CHUNK_SIZE]
    # Many bounded pieces, never the whole export at once.
    assert len(pieces) >= 5000 // exports.ROWS_PER_PIECE
    assert max(piece.count("\n") for piece in pieces) <= exports.ROWS_PER_PIECE + 1
    body = "".join(pieces)
    if name == "scores_csv":
        rows = list(csv.DictReader(io.StringIO(body)))
    else:
        rows = json.loads(body)["scores"]
    assert len(rows) == 5000
    assert [int(r["frame_index"]) for r in rows] == list(range(5000))
    anomalies = sum(r["label"] == "Anomaly" for r in rows)
    assert anomalies == 2000  # scores 0.6 .. 0.9 in every ten


# Closing a response sends request_finished, whose handler checks the database connection.
@pytest.mark.django_db(transaction=True)
async def test_it_streams_asynchronously_under_asgi():
    # Under ASGI Django reads a sync iterator into a list before sending it; the export must
    # hand ASGI an async iterator instead, pulling one piece at a time, and close the rows'
    # generator when the response closes (a client that leaves early stops the query).
    closed = []

    def lines():
        try:
            yield from (f"{i}\n" for i in range(3 * exports.ROWS_PER_PIECE))
        finally:
            closed.append(True)

    request = AsyncRequestFactory().get("/analyses/1/scores.csv")
    response = exports._stream(request, lines(), "text/csv", "analysis-1-scores.csv")
    assert response.is_async
    pieces = []
    async for piece in response.streaming_content:
        pieces.append(piece)
        break
    assert pieces == ["".join(f"{i}\n" for i in range(exports.ROWS_PER_PIECE)).encode()]
    await sync_to_async(response.close)()
    assert closed == [True]


def test_it_streams_synchronously_under_wsgi():
    request = RequestFactory().get("/analyses/1/scores.csv")
    response = exports._stream(request, iter(["a\n"]), "text/csv", "analysis-1-scores.csv")
    assert not response.is_async
    assert b"".join(response.streaming_content) == b"a\n"
