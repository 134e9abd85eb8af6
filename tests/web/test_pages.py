"""The dashboard and the analysis page: what they show, and what it costs to show it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from cameras.models import Camera
from detection.models import Analysis, FrameScore
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.html import Element, parse

pytestmark = pytest.mark.django_db


def _card(content: str, camera: Camera) -> Element:
    return parse(content).one("li", class_="card camera", id=f"camera-{camera.pk}")


def badges(element: Element) -> list[tuple[str, str]]:
    """(class, text) of each badge: `<span class="badge status-online">Online</span>`."""
    return [(span["class"], span.text) for span in element.find_all("span", class_="badge")]


def links(element: Element) -> list[tuple[str, str]]:
    return [(a["href"], a.text) for a in element.find_all("a", href=True)]


def metadata(page: Element) -> dict[str, str]:
    """The metadata table by stored key: `<tr><th scope="row" title="key">Label</th><td>value`."""
    return {th["title"]: th.parent.one("td").text for th in page.find_all("th", scope="row")}


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
    assert "North gate" in north.text
    assert "Stream (RTSP/HTTP)" in north.text
    assert ("badge status-reconnecting", "Reconnecting") in badges(north)
    assert "connection refused" in north.text
    assert "2025-05-01 08:30:15" in north.text
    assert (hot.get_absolute_url(), "Intruders") in links(north)
    assert ("badge status-running", "Running") in badges(north)
    assert "last score 0.812" in north.text
    assert ("badge badge-anomaly", "Anomaly") in badges(north)
    assert "42 frames scored" in north.text
    assert "% done" not in north.text  # progress is for files only

    clip = _card(content, upload)
    # A file's state comes from its analyses (one queued), never its stored "online".
    assert badges(clip)[0] == ("badge status-queued", "Queued")
    assert "stale error" not in clip.text  # errors only while the camera is not online
    assert "last frame" not in clip.text  # a file has no live frames
    assert (calm.get_absolute_url(), "Clip check") in links(clip)
    assert ("badge status-completed", "Completed") in badges(clip)
    assert "25% done" in clip.text
    assert ("badge badge-normal", "Normal") in badges(clip)
    assert "1 frame scored" in clip.text
    assert ("badge status-queued", "Queued") in badges(clip)
    # No score yet: no label at all rather than a misleading "Normal".
    items = clip.find_all("li", data_analysis=True)
    not_started = next(item for item in items if "Not started" in item.text)
    assert not not_started.find_all(class_="badge-normal")
    assert "last score" not in not_started.text


def test_it_shows_progress_as_frames_scored_of_frames_expected(logged_in, viewer):
    camera = CameraFactory(kind=Camera.Kind.FILE, source="/videos/p.mp4", viewers=[viewer])
    analysis = AnalysisFactory(
        camera=camera,
        status=Analysis.Status.RUNNING,
        progress=0.2,
        frames_scored=16,
        metadata={"expected_frames": 80},
    )
    card = _card(logged_in.get(reverse("dashboard")).content.decode(), camera)
    assert "16 of 80 frames (20%)" in card.text
    page = parse(logged_in.get(analysis.get_absolute_url()).content.decode())
    texts = [el.text for el in page.find_all(data_role="progress-text")]
    assert texts == ["16 of 80 frames (20%)", "16 of 80 frames (20%)"]


def test_it_shows_enough_digits_to_agree_with_the_label(logged_in, viewer):
    camera = CameraFactory(viewers=[viewer])
    analysis = AnalysisFactory(
        camera=camera, status=Analysis.Status.RUNNING, threshold=0.6, last_score=0.5997
    )
    card = _card(logged_in.get(reverse("dashboard")).content.decode(), camera)
    assert "last score 0.5997" in card.text  # not "0.600" beside "Normal"
    assert ("badge badge-normal", "Normal") in badges(card)
    page = parse(logged_in.get(analysis.get_absolute_url()).content.decode())
    assert page.one(data_role="current-score").text == "0.5997"
    AnalysisFactory(camera=camera, threshold=0.6, last_score=0.61234)
    card = _card(logged_in.get(reverse("dashboard")).content.decode(), camera)
    assert "last score 0.612" in card.text  # three digits where they suffice


def test_it_offers_an_upload_on_an_empty_dashboard(logged_in):
    page = parse(logged_in.get(reverse("dashboard")).content.decode())
    empty = page.one("section", class_="empty")
    assert (reverse("detection:upload"), "upload a video") in links(empty)


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
def crowding(viewer):
    """A file analysis that failed part way, with every field the page shows set."""
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


def test_it_shows_the_configuration_status_and_summary(logged_in, crowding):
    response = logged_in.get(crowding.get_absolute_url())
    assert response.status_code == 200
    assert response.context["normal_prompts"] == ["an empty platform", "a few people waiting"]
    content = response.content.decode()
    page = parse(content)
    for text in (
        "Crowding",
        "Platform 2",
        "0.55",
        "2.5",
        "moving average of 4",
        "The video cannot be decoded.",
        "40%",
        "0.930 at 61.50 s",
        "0.310",
    ):
        assert text in page.text, text
    prompts = [li.text for li in page.find_all("li") if not li.attrs]
    for prompt in (
        "an empty platform",
        "a few people waiting",
        "a person on the tracks",
        "a fight",
    ):
        assert prompt in prompts, prompt
    assert ("badge status-failed", "Failed") in badges(page)
    assert metadata(page)["total_frames"] == "2500"
    for text in (
        f'href="{reverse("detection:scores_csv", args=[crowding.pk])}"',
        f'href="{reverse("detection:scores_json", args=[crowding.pk])}"',
    ):
        assert text in content, text


def test_it_lists_the_incidents(logged_in, crowding, viewer):
    IncidentFactory(
        analysis=crowding,
        start_time_s=60.0,
        end_time_s=64.5,
        peak_score=0.93,
        peak_time_s=61.5,
        acknowledged_by=viewer,
        acknowledged_at=datetime(2025, 5, 2, 9, 15, tzinfo=UTC),
        note="false alarm: a maintenance crew",
    )
    IncidentFactory(
        analysis=crowding, start_time_s=120.0, end_time_s=None, peak_score=0.7, peak_time_s=121.0
    )
    content = logged_in.get(crowding.get_absolute_url()).content.decode()
    page = parse(content)
    assert "60.00 s \N{EN DASH} 64.50 s" in page.text
    assert "0.930 at 61.50 s" in page.text
    assert "viewer, 2025-05-02 09:15" in page.text
    assert "false alarm: a maintenance crew" in page.text
    ranges = {td.text: td for td in page.find_all("td", data_role="range")}
    assert ("badge badge-anomaly", "open") in badges(ranges["120.00 s \N{EN DASH} open"])
    assert "No incidents." not in content


def test_it_paginates_the_stored_scores_by_frame(logged_in, crowding):
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=crowding,
            frame_index=i,
            time_s=i / 2.5,
            score=0.9 if i == 205 else 0.2,
            normal_similarity=0.3,
            anomaly_similarity=0.2,
        )
        for i in reversed(range(250))
    )
    url = crowding.get_absolute_url()
    first = logged_in.get(url)
    assert len(first.context["page"].object_list) == 100
    assert [s.frame_index for s in first.context["page"]][:3] == [0, 1, 2]
    assert "page 1 of 3 (250 scores)" in parse(first.content.decode()).text

    third = logged_in.get(url, {"page": 3})
    rows = list(third.context["page"])
    assert len(rows) == 50
    assert [s.frame_index for s in rows] == list(range(200, 250))
    table = parse(third.content.decode()).one("table", class_="data score-table")
    assert len(table.find_all("tr")) == 1 + 50  # header + rows
    assert len(table.find_all(class_="badge-anomaly")) == 1  # frame 205, at 0.9 >= 0.55

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
