"""A camera's detect stream (issue 16, item 1): a second URL the worker scores, validated like
the source, edited in the admin, its credentials never shown."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from cameras.models import Camera
from detection.web.wall import shown_error
from tests.support.factories import AnalysisFactory, CameraFactory

pytestmark = pytest.mark.django_db

CAMERA_ADD = reverse("admin:cameras_camera_add")


def camera_form(**overrides: object) -> dict[str, object]:
    """The POST body of the admin's camera add page (no analyses inline rows)."""
    data: dict[str, object] = {
        "name": "Gate",
        "kind": Camera.Kind.STREAM,
        "source": "rtsp://10.0.0.5:554/stream1",
        "detect_source": "",
        "enabled": "on",
        "description": "",
        "analyses-TOTAL_FORMS": "0",
        "analyses-INITIAL_FORMS": "0",
        "analyses-MIN_NUM_FORMS": "0",
        "analyses-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data


def test_it_accepts_a_sub_stream_as_the_detect_stream_of_a_stream_camera():
    camera = Camera(
        name="Gate",
        kind=Camera.Kind.STREAM,
        source="rtsp://10.0.0.5:554/stream1",
        detect_source="  rtsp://10.0.0.5:554/stream2  ",
    )
    camera.full_clean()
    assert camera.detect_source == "rtsp://10.0.0.5:554/stream2"


def test_it_leaves_the_detect_stream_optional():
    camera = Camera(
        name="Gate", kind=Camera.Kind.STREAM, source="rtsp://10.0.0.5/s", detect_source=" "
    )
    camera.full_clean()
    assert camera.detect_source == ""


@pytest.mark.parametrize(
    ("detect_source", "message"),
    [
        ("ftp://10.0.0.5/stream2", "rtsp"),
        ("rtsp://169.254.169.254/latest", "metadata"),
        ("/srv/videos/clip.mp4", "rtsp"),
    ],
)
def test_it_refuses_a_detect_stream_the_source_rule_refuses(settings, detect_source, message):
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = []  # production's default
    camera = Camera(
        name="Gate",
        kind=Camera.Kind.STREAM,
        source="rtsp://10.0.0.5/stream1",
        detect_source=detect_source,
    )
    with pytest.raises(ValidationError) as caught:
        camera.full_clean()
    assert set(caught.value.message_dict) == {"detect_source"}
    assert message in " ".join(caught.value.message_dict["detect_source"]).lower()


def test_it_refuses_the_same_loopback_address_for_both_urls_as_field_errors(settings):
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = []
    camera = Camera(
        name="Gate",
        kind=Camera.Kind.STREAM,
        source="http://127.0.0.1:8000/a",
        detect_source="http://127.0.0.1:8000/b",
    )
    with pytest.raises(ValidationError) as caught:
        camera.full_clean()
    assert set(caught.value.message_dict) == {"source", "detect_source"}


@pytest.mark.parametrize("kind", [Camera.Kind.WEBCAM, Camera.Kind.FILE])
def test_it_refuses_a_detect_stream_on_a_camera_that_is_not_a_stream(kind):
    camera = Camera(name="Desk", kind=kind, source="0", detect_source="rtsp://10.0.0.5/s2")
    with pytest.raises(ValidationError) as caught:
        camera.clean()
    assert "Only stream cameras" in caught.value.message_dict["detect_source"][0]


def test_it_edits_the_detect_stream_in_the_admin(admin_client):
    form = admin_client.get(CAMERA_ADD).content.decode()
    assert 'name="detect_source"' in form

    refused = admin_client.post(CAMERA_ADD, camera_form(detect_source="file:///etc/passwd"))
    assert refused.status_code == 200
    assert "detect_source" in refused.context["adminform"].form.errors
    assert not Camera.objects.exists()

    saved = admin_client.post(CAMERA_ADD, camera_form(detect_source="rtsp://10.0.0.5:554/s2"))
    assert saved.status_code == 302
    assert Camera.objects.get().detect_source == "rtsp://10.0.0.5:554/s2"


def test_it_hides_the_detect_streams_password_wherever_errors_are_shown():
    camera = CameraFactory(
        source="rtsp://admin:mainsecret@10.0.0.5/stream1",
        detect_source="rtsp://viewer:subsecret@10.0.0.5/stream2",
        status=Camera.Status.RECONNECTING,
        # What a careless message could hold: the password outside any URL.
        last_error="cannot open stream2: auth subsecret refused (mainsecret)",
    )
    assert "subsecret" not in camera.shown_error and "mainsecret" not in camera.shown_error
    analysis = AnalysisFactory(
        camera=camera, status="failed", error_message="login subsecret refused"
    )
    assert "subsecret" not in shown_error(analysis, camera)
