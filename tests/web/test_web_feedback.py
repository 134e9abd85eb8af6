"""False alarm / Confirm on incidents, and what the analysis page shows of learning the normal.

A false alarm turns the incident's clean frames (the worker keeps a few around the peak in
`Incident.frames`) into normal examples of its camera; a confirmation into anomaly
examples. The images are copied, so the examples outlive the incident and its files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from detection import actions
from detection.live.publisher import group_name
from detection.models import Analysis, Exemplar, FrameScore, Incident
from tests.support.factories import (
    AnalysisFactory,
    FrameScoreFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.html import Element, parse
from tests.support.media import scene
from tests.support.sessions import login

pytestmark = pytest.mark.django_db

FRAME_INDEXES = (40, 50, 60)


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    ok, data = cv2.imencode(".jpg", scene(size[1], size[0], seed=seed))
    assert ok
    return data.tobytes()


@pytest.fixture
def incident(media: Path, analysis: Analysis) -> Incident:
    """An open incident of `analysis` with the clean frames the worker keeps around its peak."""
    found = IncidentFactory(analysis=analysis, end_time_s=None, peak_frame_index=50)
    names = [
        default_storage.save(f"incidents/frames/{found.pk}/{index}.jpg", ContentFile(jpeg(index)))
        for index in FRAME_INDEXES
    ]
    Incident.objects.filter(pk=found.pk).update(frames=names)
    found.refresh_from_db()
    return found


def frame_bytes(incident: Incident) -> list[bytes]:
    return [default_storage.open(name).read() for name in incident.frames]


def examples(incident: Incident) -> list[Exemplar]:
    return list(Exemplar.objects.filter(incident=incident).order_by("frame_index"))


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def false_alarm_url(incident: Incident) -> str:
    return reverse("detection:false_alarm", args=[incident.pk])


def confirm_url(incident: Incident) -> str:
    return reverse("detection:confirm", args=[incident.pk])


# --- What feedback does -----------------------------------------------------------------------


def test_it_turns_a_false_alarm_into_normal_examples_of_the_camera(
    client, incident, viewer, django_capture_on_commit_callbacks
):
    assert false_alarm_url(incident) == f"/incidents/{incident.pk}/false-alarm/"
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        response = login(client, viewer).post(false_alarm_url(incident))

    assert response.status_code == 302
    assert response["Location"] == incident.analysis.get_absolute_url()
    assert texts(response) == [
        "Marked as a false alarm: its frames now teach the camera what is normal."
    ]
    incident.refresh_from_db()
    assert incident.feedback == Incident.Feedback.FALSE_ALARM
    assert incident.feedback_by == viewer and incident.feedback_at >= before
    # Feedback is also an acknowledgement.
    assert incident.acknowledged_by == viewer and incident.acknowledged_at == incident.feedback_at

    made = examples(incident)
    assert [e.frame_index for e in made] == list(FRAME_INDEXES)
    for exemplar, original in zip(made, frame_bytes(incident), strict=True):
        # The camera's (every analysis of it), not this analysis's own.
        assert (exemplar.camera, exemplar.analysis) == (incident.analysis.camera, None)
        assert exemplar.kind == Exemplar.Kind.NORMAL
        assert exemplar.source == Exemplar.Source.FEEDBACK
        assert exemplar.created_by == viewer
        # The worker embeds them: the web leaves the embedding empty.
        assert exemplar.embedding is None and exemplar.model_spec == ""
        # A copy in the exemplar's own file.
        assert exemplar.image.name.startswith("exemplars/")
        assert exemplar.image.name not in incident.frames
        assert exemplar.image.open("rb").read() == original


def test_it_confirms_an_incident_with_anomaly_examples_and_answers_fetch_with_json(
    client, incident, viewer
):
    response = login(client, viewer).post(confirm_url(incident), HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is True and data["changed"] is True and data["exemplars"] == 3
    assert data["incident"]["id"] == incident.pk
    assert data["incident"]["feedback"] == "confirmed"
    assert data["incident"]["acknowledged_by"] == "viewer"
    assert {e.kind for e in examples(incident)} == {Exemplar.Kind.ANOMALY}


def test_it_does_not_duplicate_examples_when_the_same_feedback_comes_twice(
    client, incident, viewer
):
    colleague = UserFactory(username="colin")
    incident.analysis.camera.viewers.add(colleague)
    login(client, viewer).post(false_alarm_url(incident))
    first = [(e.pk, e.image.name) for e in examples(incident)]
    given = Incident.objects.get(pk=incident.pk)

    response = login(client, colleague).post(false_alarm_url(incident))
    assert response.status_code == 302
    assert texts(response)[-1] == "The incident was already marked “False alarm”."
    again = login(client, colleague).post(false_alarm_url(incident), HTTP_ACCEPT="application/json")
    assert again.json()["changed"] is False and again.json()["exemplars"] == 0

    assert [(e.pk, e.image.name) for e in examples(incident)] == first
    incident.refresh_from_db()
    assert (incident.feedback_by, incident.feedback_at) == (viewer, given.feedback_at)


def test_it_replaces_the_examples_when_the_feedback_switches(
    client, incident, viewer, django_capture_on_commit_callbacks
):
    login(client, viewer)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(false_alarm_url(incident))
    normal_files = [e.image.name for e in examples(incident)]
    assert all(default_storage.exists(name) for name in normal_files)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(confirm_url(incident))
    assert texts(response)[-1] == "Confirmed: its frames are now examples of an anomaly."
    made = examples(incident)
    assert len(made) == 3 and {e.kind for e in made} == {Exemplar.Kind.ANOMALY}
    assert not any(default_storage.exists(name) for name in normal_files)  # files gone too
    assert Incident.objects.get(pk=incident.pk).feedback == Incident.Feedback.CONFIRMED

    with django_capture_on_commit_callbacks(execute=True):
        client.post(false_alarm_url(incident))
    assert {e.kind for e in examples(incident)} == {Exemplar.Kind.NORMAL}
    assert Exemplar.objects.count() == 3


def test_it_keeps_the_first_acknowledger(client, incident, viewer):
    colleague = UserFactory(username="colin")
    incident.analysis.camera.viewers.add(colleague)
    earlier = timezone.now() - timezone.timedelta(hours=1)
    Incident.objects.filter(pk=incident.pk).update(
        acknowledged_by=colleague, acknowledged_at=earlier
    )
    login(client, viewer).post(confirm_url(incident))
    incident.refresh_from_db()
    assert (incident.acknowledged_by, incident.acknowledged_at) == (colleague, earlier)
    assert incident.feedback_by == viewer


def test_it_keeps_the_examples_when_the_incident_and_its_files_go(client, incident, viewer):
    login(client, viewer).post(false_alarm_url(incident))
    originals = frame_bytes(incident)
    for name in incident.frames:
        default_storage.delete(name)
    incident.delete()  # pruning, or a re-run
    kept = list(Exemplar.objects.order_by("frame_index"))
    assert len(kept) == 3 and all(e.incident is None for e in kept)
    assert [e.image.open("rb").read() for e in kept] == originals


def test_it_learns_from_the_thumbnail_of_an_incident_without_frames(client, incident, viewer):
    Incident.objects.filter(pk=incident.pk).update(frames=[])
    incident.refresh_from_db()
    incident.thumbnail.save("peak.jpg", ContentFile(jpeg(7)))
    login(client, viewer).post(false_alarm_url(incident))
    (only,) = examples(incident)
    assert only.frame_index == 50  # the peak's
    assert only.image.open("rb").read() == jpeg(7)


def test_it_records_feedback_on_an_incident_without_any_frame_and_says_so(client, incident, viewer):
    for name in incident.frames:
        default_storage.delete(name)  # listed, but gone (pruned)
    response = login(client, viewer).post(false_alarm_url(incident))
    assert texts(response) == [
        "Marked as a false alarm: its frames now teach the camera what is normal. "
        "No frame of this incident was available to learn from."
    ]
    assert Incident.objects.get(pk=incident.pk).feedback == Incident.Feedback.FALSE_ALARM
    assert not Exemplar.objects.exists()


def test_it_refuses_unknown_feedback_in_the_service(incident, viewer):
    for kind in ("", "maybe"):
        with pytest.raises(ValueError):
            actions.feedback(incident, kind, viewer)
    assert Incident.objects.get(pk=incident.pk).feedback == ""


def test_it_tells_live_pages_about_the_feedback(
    client, incident, viewer, settings, django_capture_on_commit_callbacks
):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group_name(incident.analysis_id), channel)
    with django_capture_on_commit_callbacks(execute=True):
        login(client, viewer).post(false_alarm_url(incident))
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "analysis.incident"
    assert message["id"] == incident.pk
    assert message["feedback"] == "false_alarm"
    assert message["acknowledged_by"] == "viewer"


# --- Who may ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [false_alarm_url, confirm_url])
def test_it_lets_any_viewer_give_feedback_and_hides_the_incident_from_others(
    client, incident, viewer, stranger, url
):
    assert not viewer.has_perm("detection.change_incident")
    assert login(client, stranger).post(url(incident)).status_code == 404
    assert login(client, stranger).post(url(IncidentFactory.build(pk=99999))).status_code == 404
    anonymous = Client().post(url(incident))
    assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]
    assert login(client, viewer).get(url(incident)).status_code == 405
    incident.refresh_from_db()
    assert incident.feedback == "" and not Exemplar.objects.exists()
    assert login(client, viewer).post(url(incident)).status_code == 302


@pytest.mark.parametrize("url", [false_alarm_url, confirm_url])
def test_it_enforces_csrf_on_feedback(incident, viewer, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    assert client.post(url(incident)).status_code == 403
    assert Incident.objects.get(pk=incident.pk).feedback == ""

    # The token from the page's own form works, as a form field or as the fetch header.
    page = parse(client.get(incident.analysis.get_absolute_url()).content.decode())
    form = page.one("form", action=url(incident))
    token = form.one("input", name="csrfmiddlewaretoken")["value"]
    response = client.post(url(incident), HTTP_X_CSRFTOKEN=token, HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response.json()["ok"] is True


def test_it_gives_feedback_from_the_admin_with_the_same_service(admin_client, incident):
    changelist = reverse("admin:detection_incident_changelist")
    response = admin_client.post(
        changelist, {"action": "false_alarm", "_selected_action": [incident.pk]}, follow=True
    )
    assert "Marked 1 incident “false alarm”; 3 examples recorded from their frames." in texts(
        response
    )
    assert {e.kind for e in examples(incident)} == {Exemplar.Kind.NORMAL}
    page = admin_client.get(reverse("admin:detection_incident_change", args=[incident.pk]))
    fieldsets = {name: options["fields"] for name, options in page.context["adminform"].fieldsets}
    assert list(fieldsets["Feedback"]) == ["feedback", "feedback_by", "feedback_at"]
    assert {"feedback", "feedback_by", "feedback_at"} <= set(
        page.context["adminform"].readonly_fields
    )
    feedback = parse(page.content.decode()).find_all("fieldset", class_="module")[-1]
    assert "Feedback: False alarm" in feedback.text


# --- The analysis page ------------------------------------------------------------------------


def incident_row(page: Element, incident: Incident) -> Element:
    return page.one("tr", data_incident_id=str(incident.pk))


def facts(page: Element) -> dict[str, str]:
    """The `<dl class="facts">` cards: {term: description}."""
    return {
        dt.text: dd.text
        for dl in page.find_all("dl", class_="facts")
        for dt, dd in zip(dl.find_all("dt"), dl.find_all("dd"), strict=True)
    }


def test_it_puts_false_alarm_and_confirm_buttons_on_each_incident(client, incident, viewer):
    given = IncidentFactory(analysis=incident.analysis, feedback="false_alarm", feedback_by=viewer)
    page = parse(login(client, viewer).get(incident.analysis.get_absolute_url()).content.decode())
    table = page.one("table", class_="incidents")
    assert table["data-false-alarm-url"] == reverse("detection:false_alarm", args=[0])
    assert table["data-confirm-url"] == reverse("detection:confirm", args=[0])

    row = incident_row(page, incident)
    forms = row.find_all("form", data_role="feedback-form")
    assert [(f["action"], f.one("button").text) for f in forms] == [
        (false_alarm_url(incident), "False alarm"),
        (confirm_url(incident), "Confirm"),
    ]
    assert all(f.find_all("input", name="csrfmiddlewaretoken") for f in forms)
    assert not row.find_all("button", disabled=True)
    assert row.one("td", data_role="feedback").one(data_role="feedback-given").text == ""

    done = incident_row(page, given)
    assert done.one("span", class_="badge feedback-false_alarm").text == "False alarm"
    disabled = done.one("button", disabled=True)
    assert disabled.text == "False alarm"  # the other one switches it
    assert " onclick=" not in page.raw_text and not page.find_all("script", src=False)


def test_it_shows_the_mode_learning_period_and_fixed_threshold(client, viewer):
    analysis = AnalysisFactory(
        camera__viewers=[viewer], mode="normality", learning_seconds=30, threshold=0.55
    )
    response = login(client, viewer).get(analysis.get_absolute_url())
    page = parse(response.content.decode())
    shown = facts(page)
    assert shown["Mode"] == "Normality (distance to the learned normal)"
    assert shown["Learning"] == "the first 30 s are learned as normal"
    assert shown["Threshold"] == "0.55"
    assert page.one(id="analysis-page")["data-threshold"] == "0.55"
    assert page.one("span", data_role="learning").get("hidden") is not None  # not learning


@pytest.mark.parametrize(
    ("metadata", "shown", "data"),
    [
        ({}, "automatic: derived after learning", "0.6"),
        ({"anomaly_threshold": 0.5312, "auto_threshold": 0.5312}, "automatic: 0.531", "0.5312"),
    ],
)
def test_it_shows_the_automatic_threshold_once_the_worker_derived_it(
    client, viewer, metadata, shown, data
):
    analysis = AnalysisFactory(
        camera__viewers=[viewer],
        mode="combined",
        learning_seconds=20,
        auto_threshold=True,
        threshold=0.6,
        metadata=metadata,
    )
    page = parse(login(client, viewer).get(analysis.get_absolute_url()).content.decode())
    assert page.one("dd", data_role="threshold-in-use").text == shown
    assert page.one(id="analysis-page")["data-threshold"] == data
    assert page.one(id="analysis-page")["data-auto-threshold"] == "true"


def test_it_shows_learning_progress_while_the_newest_frames_are_learned(client, viewer):
    analysis = AnalysisFactory(
        camera__viewers=[viewer],
        mode="normality",
        learning_seconds=30,
        status=Analysis.Status.RUNNING,
        last_score=0.2,
    )
    for i in range(13):
        FrameScoreFactory(analysis=analysis, frame_index=i, time_s=5.0 + i, learning=True)
    page = parse(login(client, viewer).get(analysis.get_absolute_url()).content.decode())
    indicator = page.one("span", data_role="learning")
    assert indicator.text == "learning: 12 of 30 s" and indicator.get("hidden") is None
    root = page.one(id="analysis-page")
    assert (root["data-learning-seconds"], root["data-learning-start"]) == ("30.0", "5.0")
    assert page.one("span", data_role="current-label").text == "Learning"

    FrameScoreFactory(analysis=analysis, frame_index=13, time_s=18.0, learning=False)
    page = parse(client.get(analysis.get_absolute_url()).content.decode())
    assert page.one("span", data_role="learning").get("hidden") is not None


def test_it_draws_learning_frames_apart_and_labels_them_in_the_score_table(client, viewer):
    analysis = AnalysisFactory(
        camera__viewers=[viewer],
        camera__kind="file",
        camera__source="/v/a.mp4",
        status=Analysis.Status.COMPLETED,
        mode="combined",
        learning_seconds=2,
        threshold=0.5,
    )
    FrameScore.objects.bulk_create(
        [
            FrameScore(
                analysis=analysis,
                frame_index=0,
                time_s=0.0,
                score=0.99,  # never the peak, never an anomaly: it was learned
                normal_similarity=0.2,
                anomaly_similarity=0.2,
                prompt_score=0.99,
                learning=True,
            ),
            FrameScore(
                analysis=analysis,
                frame_index=1,
                time_s=3.0,
                score=0.7,
                normal_similarity=0.2,
                anomaly_similarity=0.2,
                prompt_score=0.3,
                novelty=0.7,
            ),
        ]
    )
    response = login(client, viewer).get(analysis.get_absolute_url())
    series = response.context["series"]
    assert series["points"] == [
        {"i": 0, "t": 0.0, "s": 0.99, "l": True, "p": 0.99},
        {"i": 1, "t": 3.0, "s": 0.7, "p": 0.3, "n": 0.7},
    ]
    assert series["peak"] == {"i": 1, "t": 3.0, "s": 0.7, "p": 0.3, "n": 0.7}
    table = parse(response.content.decode()).one("table", class_="score-table")
    labels = [row.find_all("td")[8].text for row in table.find_all("tr")[1:]]
    assert labels == ["Learning", "Anomaly"]
