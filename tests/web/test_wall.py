"""The dashboard wall: its status poll (state.json), one camera's card, and what a card
shows (display states, errors without credentials, phases, the latest frame)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from cameras.models import Camera
from detection.models import Analysis
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory
from tests.support.html import Element, parse

pytestmark = pytest.mark.django_db

STATE = "detection:wall_state"
SECRET_URL = "rtsp://admin:hunter2secret@10.0.0.7:554/stream1?pwd=alsosecret"


def card(client, camera: Camera) -> Element:
    page = parse(client.get(reverse("dashboard")).content.decode())
    return page.one("li", class_="card camera", id=f"camera-{camera.pk}")


def badge_texts(element: Element) -> list[str]:
    return [span.text for span in element.find_all("span", class_="badge")]


def state(client) -> dict:
    response = client.get(reverse(STATE))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    return response.json()


# --- state.json: access and cost --------------------------------------------------------


def test_it_lists_only_the_cameras_shared_with_the_user(logged_in, viewer, analysis):
    CameraFactory(name="Elsewhere")
    mine = CameraFactory(name="Back door", viewers=[viewer])
    body = state(logged_in)
    assert [c["id"] for c in body["cameras"]] == [mine.pk, analysis.camera_id]  # by name
    gate = body["cameras"][1]
    assert [a["id"] for a in gate["analyses"]] == [analysis.pk]
    assert gate["card_url"] == reverse("detection:wall_card", args=[analysis.camera_id])


def test_it_refuses_the_poll_to_anonymous_users(client, analysis):
    response = client.get(reverse(STATE))
    assert response.status_code == 403
    assert "Gate" not in response.content.decode()


def test_it_answers_the_poll_only_to_gets(logged_in):
    assert logged_in.post(reverse(STATE)).status_code == 405


def test_it_drops_a_camera_from_the_poll_once_access_is_revoked(logged_in, viewer, analysis):
    assert [c["id"] for c in state(logged_in)["cameras"]] == [analysis.camera_id]
    analysis.camera.viewers.remove(viewer)
    assert state(logged_in)["cameras"] == []


def test_it_answers_the_poll_in_a_fixed_number_of_queries(
    client, django_assert_max_num_queries, capsys
):
    user = UserFactory(username="wall")
    for n in range(50):
        camera = CameraFactory(name=f"Cam {n:02d}", viewers=[user])
        AnalysisFactory.create_batch(
            2, camera=camera, status="running", frames_scored=120, last_frame_index=1190
        )
    client.force_login(user)
    client.get(reverse(STATE))  # warm up (URL resolver, templates)
    # session + user, the operators check, cameras, their analyses: never one per camera.
    with django_assert_max_num_queries(5) as queries:
        started = time.perf_counter()
        body = client.get(reverse(STATE)).json()
        elapsed = time.perf_counter() - started
    assert len(body["cameras"]) == 50
    assert sum(len(c["analyses"]) for c in body["cameras"]) == 100
    with capsys.disabled():
        print(
            f"\nstate.json, 50 cameras x 2 analyses: {len(queries)} queries, "
            f"{elapsed * 1000:.1f} ms, {len(client.get(reverse(STATE)).content)} bytes"
        )


# --- one camera's card --------------------------------------------------------------------


def test_it_renders_a_card_from_the_same_template_as_the_page(logged_in, analysis, stranger):
    url = reverse("detection:wall_card", args=[analysis.camera_id])
    fragment = parse(logged_in.get(url).content.decode())
    assert fragment.one("li", class_="card camera").text == card(logged_in, analysis.camera).text
    logged_in.force_login(stranger)
    assert logged_in.get(url).status_code == 404


def test_it_changes_a_cards_version_when_an_analysis_is_added(logged_in, analysis):
    before = state(logged_in)["cameras"][0]["version"]
    assert card(logged_in, analysis.camera)["data-version"] == before
    AnalysisFactory(camera=analysis.camera, name="Second")
    after = state(logged_in)["cameras"][0]["version"]
    assert after != before
    assert card(logged_in, analysis.camera)["data-version"] == after


def test_it_gives_an_empty_dashboard_its_poll(logged_in):
    page = parse(logged_in.get(reverse("dashboard")).content.decode())
    assert page.one(id="wall")["data-state-url"] == reverse(STATE)
    assert page.one("section", class_="empty")


# --- what a card shows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "shown"),
    [
        ([], "Not analysed yet"),
        (["draft"], "Not analysed yet"),
        (["completed", "queued"], "Queued"),
        (["queued", "running"], "Analysing"),
        (["completed"], "Analysed"),
        (["failed"], "Failed"),
    ],
)
def test_it_gives_file_cameras_states_from_their_analyses(logged_in, viewer, statuses, shown):
    camera = CameraFactory(kind=Camera.Kind.FILE, source="/videos/a.mp4", viewers=[viewer])
    for status in statuses:
        AnalysisFactory(camera=camera, status=status)
    shown_card = card(logged_in, camera)
    assert badge_texts(shown_card)[0] == shown
    assert "last frame" not in shown_card.text and "Offline" not in shown_card.text
    assert "Camera:" not in shown_card.text  # a file does not stream
    assert state(logged_in)["cameras"][0]["state_label"] == shown


def test_it_takes_the_most_recently_finished_analysis_of_a_file(logged_in, viewer):
    camera = CameraFactory(kind=Camera.Kind.FILE, source="/videos/a.mp4", viewers=[viewer])
    now = timezone.now()
    AnalysisFactory(camera=camera, status="failed", finished_at=now - timedelta(hours=1))
    AnalysisFactory(camera=camera, status="completed", finished_at=now)
    assert badge_texts(card(logged_in, camera))[0] == "Analysed"


def test_it_shows_a_cameras_error_without_its_password(logged_in, viewer):
    camera = CameraFactory(
        source=SECRET_URL,
        status=Camera.Status.RECONNECTING,
        last_error=f"cannot open {SECRET_URL}: connection refused; hunter2secret",
        viewers=[viewer],
    )
    AnalysisFactory(camera=camera, status="failed", error_message=f"gave up on {SECRET_URL}")
    page = logged_in.get(reverse("dashboard")).content.decode()
    poll = logged_in.get(reverse(STATE)).content.decode()
    fragment = logged_in.get(reverse("detection:wall_card", args=[camera.pk])).content.decode()
    for text in (page, poll, fragment):
        assert "hunter2secret" not in text and "alsosecret" not in text
    shown = card(logged_in, camera)
    assert shown.one(data_role="camera-error").text == (
        "cannot open rtsp://admin:***@10.0.0.7:554/stream1?pwd=***: connection refused; ***"
    )
    assert shown.one(data_role="analysis-error").text == (
        "gave up on rtsp://admin:***@10.0.0.7:554/stream1?pwd=***"
    )
    camera_state = state(logged_in)["cameras"][0]
    assert camera_state["error"].startswith("cannot open rtsp://admin:***@")
    assert camera_state["analyses"][0]["error_message"].startswith("gave up on")


@pytest.mark.parametrize("status", ["offline", "failed", "reconnecting"])
def test_it_shows_the_last_error_whenever_the_camera_is_not_online(logged_in, viewer, status):
    camera = CameraFactory(status=status, last_error="no frame within 5 s", viewers=[viewer])
    assert card(logged_in, camera).one(data_role="camera-error").text == "no frame within 5 s"


def test_it_hides_a_stale_error_while_the_camera_is_online(logged_in, viewer):
    camera = CameraFactory(status="online", last_error="old news", viewers=[viewer])
    assert "old news" not in card(logged_in, camera).text
    assert state(logged_in)["cameras"][0]["error"] == ""


def test_it_tells_a_streaming_camera_from_one_without_frames(logged_in, viewer):
    now = timezone.now()
    fresh = CameraFactory(name="A", status="online", last_frame_at=now, viewers=[viewer])
    stale = CameraFactory(
        name="B", status="online", last_frame_at=now - timedelta(minutes=5), viewers=[viewer]
    )
    down = CameraFactory(name="C", status="reconnecting", last_frame_at=now, viewers=[viewer])
    for camera, streaming in ((fresh, True), (stale, False), (down, False)):
        indicator = card(logged_in, camera).one(data_role="camera-streaming")
        assert indicator.text == ("Camera: streaming" if streaming else "Camera: no frames")
        assert indicator["data-streaming"] == str(streaming).lower()
    assert [c["streaming"] for c in state(logged_in)["cameras"]] == [True, False, False]
    page = parse(logged_in.get(reverse("dashboard")).content.decode())
    assert page.one(data_role="page-state").text.startswith("Page:")  # the other indicator


def test_it_shows_the_phase_beside_the_status(logged_in, viewer):
    camera = CameraFactory(viewers=[viewer])
    AnalysisFactory(camera=camera, status="running", metadata={"phase": "loading model"})
    item = card(logged_in, camera).one("li", class_="analysis-item")
    assert item.one(data_role="phase").text == "loading model"
    assert state(logged_in)["cameras"][0]["analyses"][0]["phase"] == "loading model"
    Analysis.objects.update(status="completed")  # a stale phase of a finished run: not shown
    assert state(logged_in)["cameras"][0]["analyses"][0]["phase"] == ""


def test_it_shows_the_latest_frame_with_its_score_or_a_placeholder(logged_in, viewer):
    camera = CameraFactory(viewers=[viewer])
    scored = AnalysisFactory(
        camera=camera, name="A", status="running", last_frame_index=340, last_score=0.91
    )
    AnalysisFactory(camera=camera, name="B", status="queued")
    items = card(logged_in, camera).find_all("li", class_="analysis-item")
    url = f"{reverse('detection:frame', args=[scored.pk])}?v=340"
    assert items[0].one("img", data_role="frame")["src"] == url
    assert items[0].one(data_role="frame-score").text == "0.910"
    assert "is-anomaly" in items[0].one(data_role="frame-score")["class"]
    assert items[0].one(data_role="frame-placeholder").get("hidden") is not None
    assert items[1].one("img", data_role="frame").get("src") is None
    assert items[1].one(data_role="frame-placeholder").text == "No frame scored yet"
    polled = state(logged_in)["cameras"][0]["analyses"]
    assert [a["frame_url"] for a in polled] == [url, None]
    assert [a["last_frame_index"] for a in polled] == [340, None]
