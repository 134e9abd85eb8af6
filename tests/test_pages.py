"""The dashboard and the analysis page: what they show, and what it costs to show it."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from cameras.models import Camera
from detection.models import Analysis, FrameScore
from tests.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    IncidentFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer(settings):
    return UserFactory(username="vera")


@pytest.fixture
def logged_in(client, viewer):
    client.force_login(viewer)
    return client


def _card(content: str, camera: Camera) -> str:
    match = re.search(
        rf'<li class="card camera" id="camera-{camera.pk}">(.*?)\n    </li>', content, re.S
    )
    assert match, f"no card for {camera}"
    return match.group(1)


# --- Dashboard ------------------------------------------------------------------------------


def test_it_shows_the_empty_state_without_cameras(logged_in):
    content = logged_in.get(reverse("dashboard")).content.decode()
    assert "No cameras yet" in content
    assert 'class="cards"' not in content


def test_it_shows_each_camera_with_its_status_and_analyses(logged_in, viewer):
    failing = CameraFactory(
        name="North gate",
        status=Camera.Status.RECONNECTING,
        last_error="connection refused",
        last_frame_at=datetime(2025, 5, 1, 8, 30, 15, tzinfo=UTC),
        viewers=[viewer],
    )
    upload = CameraFactory(
        name="upload.mp4",
        kind=Camera.Kind.FILE,
        source="/videos/upload.mp4",
        status=Camera.Status.ONLINE,
        last_error="stale error, camera is fine",
        viewers=[viewer],
    )
    hot = AnalysisFactory(
        camera=failing,
        name="Intruders",
        status=Analysis.Status.RUNNING,
        threshold=0.6,
        last_score=0.8123,
        frames_scored=42,
    )
    calm = AnalysisFactory(
        camera=upload,
        name="Clip check",
        status=Analysis.Status.COMPLETED,
        progress=0.25,
        threshold=0.6,
        last_score=0.2,
        frames_scored=1,
    )
    AnalysisFactory(camera=upload, name="Not started", status=Analysis.Status.QUEUED)

    content = logged_in.get(reverse("dashboard")).content.decode()

    north = _card(content, failing)
    assert "North gate" in north
    assert "Stream (RTSP/HTTP)" in north
    assert '<span class="badge status-reconnecting">Reconnecting</span>' in north
    assert "connection refused" in north
    assert "2025-05-01 08:30:15" in north
    assert f'href="{hot.get_absolute_url()}">Intruders</a>' in north
    assert '<span class="badge status-running">Running</span>' in north
    assert "last score 0.812" in north
    assert '<span class="badge badge-anomaly">Anomaly</span>' in north
    assert "42 frames scored" in north
    assert "% done" not in north  # progress is for files only

    clip = _card(content, upload)
    assert '<span class="badge status-online">Online</span>' in clip
    assert "stale error" not in clip  # errors only while failing or reconnecting
    assert "last frame never" in " ".join(clip.split())
    assert f'href="{calm.get_absolute_url()}">Clip check</a>' in clip
    assert '<span class="badge status-completed">Completed</span>' in clip
    assert "25% done" in clip
    assert '<span class="badge badge-normal">Normal</span>' in clip
    assert "1 frame scored" in clip
    assert '<span class="badge status-queued">Queued</span>' in clip
    # No score yet: no label at all rather than a misleading "Normal".
    not_started = clip.split("Not started")[1]
    assert "badge-normal" not in not_started and "last score" not in not_started


@pytest.mark.parametrize("count", [1, 12])
def test_it_renders_the_dashboard_in_a_bounded_number_of_queries(
    client, settings, django_assert_max_num_queries, count
):
    viewer = UserFactory(username="many")
    for _ in range(count):
        camera = CameraFactory(viewers=[viewer])
        AnalysisFactory.create_batch(3, camera=camera, last_score=0.7)
    client.force_login(viewer)
    # session + user, the operators check, cameras, their analyses: never one per camera.
    with django_assert_max_num_queries(5):
        response = client.get(reverse("dashboard"))
    assert response.content.decode().count('class="card camera"') == count


# --- Analysis page ----------------------------------------------------------------------------


@pytest.fixture
def analysis(viewer):
    return AnalysisFactory(
        camera__viewers=[viewer],
        camera__name="Platform 2",
        camera__kind=Camera.Kind.FILE,
        camera__source="/videos/platform2.mp4",
        name="Crowding",
        normal_prompts="an empty platform\n\n  a few people waiting  ",
        anomaly_prompts="a person on the tracks\na fight",
        threshold=0.55,
        sampling_fps=2.5,
        smoothing_window=4,
        hysteresis=0.1,
        status=Analysis.Status.FAILED,
        error_message="The video cannot be decoded.",
        progress=0.4,
        frames_scored=250,
        peak_score=0.93,
        peak_time_s=61.5,
        average_score=0.31,
        metadata={"total_frames": 2500, "is_anomaly_detected": True},
    )


def test_it_shows_the_configuration_status_and_summary(logged_in, analysis):
    response = logged_in.get(analysis.get_absolute_url())
    assert response.status_code == 200
    assert response.context["normal_prompts"] == ["an empty platform", "a few people waiting"]
    content = response.content.decode()
    for text in (
        "Crowding",
        "Platform 2",
        "<li>an empty platform</li>",
        "<li>a few people waiting</li>",
        "<li>a person on the tracks</li>",
        "<li>a fight</li>",
        "0.55",
        "2.5",
        "moving average of 4",
        '<span class="badge status-failed">Failed</span>',
        "The video cannot be decoded.",
        "40%",
        "0.930 at 61.50 s",
        "0.310",
        '<th scope="row">total_frames</th><td>2500</td>',
        f'href="{reverse("detection:scores_csv", args=[analysis.pk])}"',
        f'href="{reverse("detection:scores_json", args=[analysis.pk])}"',
    ):
        assert text in content, text


def test_it_lists_the_incidents(logged_in, analysis, viewer):
    IncidentFactory(
        analysis=analysis,
        start_time_s=60.0,
        end_time_s=64.5,
        peak_score=0.93,
        peak_time_s=61.5,
        acknowledged_by=viewer,
        acknowledged_at=datetime(2025, 5, 2, 9, 15, tzinfo=UTC),
        note="false alarm: a maintenance crew",
    )
    IncidentFactory(
        analysis=analysis, start_time_s=120.0, end_time_s=None, peak_score=0.7, peak_time_s=121.0
    )
    content = logged_in.get(analysis.get_absolute_url()).content.decode()
    assert "60.00 s \N{EN DASH} 64.50 s" in content
    assert "0.930 at 61.50 s" in content
    assert "vera, 2025-05-02 09:15" in content
    assert "false alarm: a maintenance crew" in content
    assert '120.00 s \N{EN DASH} <span class="badge badge-anomaly">open</span>' in content
    assert "No incidents." not in content


def test_it_paginates_the_stored_scores_by_frame(logged_in, analysis):
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=analysis,
            frame_index=i,
            time_s=i / 2.5,
            score=0.9 if i == 205 else 0.2,
            normal_similarity=0.3,
            anomaly_similarity=0.2,
        )
        for i in reversed(range(250))
    )
    url = analysis.get_absolute_url()
    first = logged_in.get(url)
    assert len(first.context["page"].object_list) == 100
    assert [s.frame_index for s in first.context["page"]][:3] == [0, 1, 2]
    assert "page 1 of 3 (250 scores)" in first.content.decode()

    third = logged_in.get(url, {"page": 3})
    rows = list(third.context["page"])
    assert len(rows) == 50
    assert [s.frame_index for s in rows] == list(range(200, 250))
    body = third.content.decode().split('class="data score-table"')[1]
    assert body.count("<tr>") == 1 + 50  # header + rows
    assert body.count("badge-anomaly") == 1  # frame 205, at 0.9 >= 0.55

    # Junk or out-of-range pages fall back instead of failing.
    assert logged_in.get(url, {"page": "x"}).context["page"].number == 1
    assert logged_in.get(url, {"page": 99}).context["page"].number == 3


def test_it_shows_an_analysis_without_scores_or_incidents(logged_in, viewer):
    analysis = AnalysisFactory(camera__viewers=[viewer])
    FrameScoreFactory(analysis=AnalysisFactory(camera=analysis.camera))  # someone else's
    content = logged_in.get(analysis.get_absolute_url()).content.decode()
    assert "live camera (no end)" in content  # a stream has no progress
    assert "No scores stored yet." in content
    assert "No incidents." in content
    assert "Metadata" not in content
