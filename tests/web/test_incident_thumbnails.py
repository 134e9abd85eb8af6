"""Incident thumbnails: made by the worker, served through an access-checked view, shown with
the incidents on the analysis page, in the live messages and in the admin.

MEDIA_ROOT is never served as a directory (no MEDIA_URL route, no nginx location): every
image a page shows is fetched here through the URL the page itself carries.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from detection.live.messages import incident_message
from detection.live.publisher import NullPublisher
from detection.models import Incident
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory, IncidentFactory
from tests.support.html import parse
from tests.support.sessions import client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("tiny_settings")]


@pytest.fixture
def incident(media, make_video, viewer) -> Incident:
    """A real incident with the thumbnail the worker wrote, on a camera shared with `viewer`.

    The worker scores a clip for it: the tests that use it are slow.
    """
    clip = make_video("hot.avi", frames=40, fps=10.0, size=(640, 360))
    camera = CameraFactory(kind="file", source=str(clip), viewers=[viewer])
    # A threshold this low makes every frame anomalous: the incident opens on the third.
    analysis = AnalysisFactory(
        camera=camera, status="queued", threshold=0.0001, incident_open_frames=3, localize=True
    )
    Worker(publisher=NullPublisher(), poll_seconds=0.05, once=True).run()
    found = Incident.objects.get(analysis=analysis)
    assert found.thumbnail
    return found


def assert_is_the_thumbnail(response, incident: Incident) -> None:
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"] == "image/jpeg"
    body = b"".join(response.streaming_content)
    assert body == incident.thumbnail.open("rb").read()
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (360, 640)


def image_sources(html: str) -> list[str]:
    return [img["src"] for img in parse(html).find_all("img", src=True)]


@pytest.mark.slow
def test_it_serves_the_thumbnail_a_page_shows_to_a_viewer_of_the_camera(incident):
    viewer = incident.analysis.camera.viewers.get()
    client = client_for(viewer)
    page = client.get(incident.analysis.get_absolute_url()).content.decode()
    sources = [s for s in image_sources(page) if "/thumbnail.jpg" in s]
    assert sources == [incident.thumbnail_url]
    assert_is_the_thumbnail(client.get(sources[0]), incident)


@pytest.mark.slow
def test_it_answers_404_to_users_who_may_not_see_the_camera_and_asks_strangers_to_log_in(
    incident, stranger
):
    url = incident.thumbnail_url
    assert client_for(stranger).get(url).status_code == 404
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]


@pytest.mark.slow
def test_it_answers_404_for_an_incident_without_a_thumbnail(incident):
    Incident.objects.filter(pk=incident.pk).update(thumbnail="")
    viewer = incident.analysis.camera.viewers.get()
    url = reverse("detection:incident_thumbnail", args=[incident.pk])
    assert client_for(viewer).get(url).status_code == 404
    assert Incident.objects.get(pk=incident.pk).thumbnail_url is None


@pytest.mark.slow
def test_it_does_not_serve_media_root_as_a_directory(incident):
    viewer = incident.analysis.camera.viewers.get()
    assert client_for(viewer).get(f"/media/{incident.thumbnail.name}").status_code == 404


@pytest.mark.slow
def test_it_carries_the_thumbnail_url_in_live_incident_messages(incident):
    message = incident_message(incident)
    assert message["thumbnail_url"] == incident.thumbnail_url
    assert message["thumbnail_url"].startswith(f"/incidents/{incident.pk}/thumbnail.jpg?v=")


@pytest.mark.slow
def test_it_previews_the_thumbnail_in_the_admin_with_an_image_that_loads(incident, admin_client):
    url = reverse("admin:detection_incident_change", args=[incident.pk])
    page = admin_client.get(url).content.decode()
    sources = [s for s in image_sources(page) if "thumbnail" in s]
    assert sources == [incident.thumbnail_url]
    assert_is_the_thumbnail(admin_client.get(sources[0]), incident)
    # No link to the file's MEDIA_URL, which nothing serves.
    assert f"/media/{incident.thumbnail.name}" not in page


def test_it_changes_the_url_when_the_worker_replaces_the_thumbnail():
    first = IncidentFactory(peak_frame_index=3)
    first.thumbnail.name = "incidents/x.jpg"
    later = IncidentFactory(peak_frame_index=9)
    later.thumbnail.name = "incidents/x.jpg"
    assert first.thumbnail_url.endswith("?v=3") and later.thumbnail_url.endswith("?v=9")
