"""Incident e-mail through a real SMTP server (aiosmtpd on a free local port).

Who gets mail is the access rule (cameras.access) intersected with the opt-ins: viewers,
viewer groups, operators and superusers who turned e-mail on for the camera; nobody who may
not see it, whatever they subscribed to. At most one mail per analysis per interval.
"""

from __future__ import annotations

import email
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from django.urls import reverse
from django.utils import timezone

from cameras.access import OPERATORS_GROUP
from detection.models import Analysis, IncidentSubscription
from detection.worker import notifications
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    GroupFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.waiting import wait_until

PUBLIC_URL = "https://watch.example.com"


class Inbox:
    """An aiosmtpd handler that keeps every message it accepted."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.content)
        message["X-Rcpt"] = ",".join(envelope.rcpt_tos)
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def to(self) -> list[str]:
        with self.lock:
            return sorted(m["To"] for m in self.messages)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def inbox(settings) -> Iterator[Inbox]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    # The test environment's locmem backend is replaced by the real one, as deployed.
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", controller.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5.0
    settings.DEFAULT_FROM_EMAIL = "clipwatch@example.com"
    settings.DETECTION_PUBLIC_URL = PUBLIC_URL
    settings.DETECTION_EMAIL_INTERVAL_MINUTES = 10
    try:
        yield handler
    finally:
        notifications.wait_idle()
        controller.stop()


def subscribe(user, camera, on: bool = True) -> None:
    IncidentSubscription.objects.create(user=user, camera=camera, email=on)


def opened(analysis: Analysis):
    return IncidentFactory(analysis=analysis, end_time_s=None, peak_score=0.91)


@pytest.mark.django_db
def test_it_mails_only_subscribers_who_may_see_the_camera(inbox):
    crew = GroupFactory(name="night crew")
    viewer, member, unsubscribed, opted_out = (
        UserFactory(username=n) for n in ("viewer", "member", "unsubscribed", "opted_out")
    )
    member.groups.add(crew)
    operator = UserFactory(username="operator", groups=[GroupFactory(name=OPERATORS_GROUP)])
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    stranger = UserFactory(username="stranger")  # subscribed, but may not see the camera
    inactive = UserFactory(username="inactive", is_active=False)
    no_address = UserFactory(username="no_address", email="")
    camera = CameraFactory(
        name="Gate", viewers=[viewer, unsubscribed, opted_out, inactive, no_address]
    )
    camera.viewer_groups.add(crew)
    for user in (viewer, member, operator, root, stranger, inactive, no_address):
        subscribe(user, camera)
    subscribe(opted_out, camera, on=False)
    subscribe(stranger, CameraFactory(viewers=[stranger]))  # their own camera: not this one
    analysis = AnalysisFactory(camera=camera, name="Gate watch", threshold=0.6)
    incident = opened(analysis)

    assert notifications.incident_opened(analysis, incident) is True
    expected = sorted(f"{n}@example.com" for n in ("viewer", "member", "operator", "root"))
    wait_until(lambda: inbox.to() == expected, 15, "one mail per allowed subscriber")
    message = inbox.messages[0]
    assert message["Subject"] == "[clipwatch] Incident on Gate: Gate watch"
    assert message["From"] == "clipwatch@example.com"
    assert "," not in message["X-Rcpt"], "one message per person: no shared recipient list"
    body = message.get_payload(decode=True).decode()
    assert f"Incident {incident.pk} opened on camera 'Gate'" in body
    link = f"{PUBLIC_URL}/incidents/?incident={incident.pk}"
    assert f"Open it: {link}\r\n" in body
    assert "Peak score: 0.910 (threshold 0.60)" in body

    # Access goes, mail goes: the viewer is no longer shared the camera.
    camera.viewers.remove(viewer)
    inbox.messages.clear()
    Analysis.objects.filter(pk=analysis.pk).update(email_sent_at=None)
    notifications.incident_opened(analysis, opened(analysis))
    wait_until(lambda: len(inbox.to()) == 3, 15, "mail to those who still see it")
    assert "viewer@example.com" not in inbox.to()


@pytest.mark.django_db
def test_it_sends_one_mail_per_analysis_per_interval_and_counts_the_rest(inbox):
    viewer = UserFactory(username="viewer")
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]))
    subscribe(viewer, analysis.camera)
    other = AnalysisFactory(camera=analysis.camera)  # its own limit

    assert notifications.incident_opened(analysis, opened(analysis)) is True
    assert notifications.incident_opened(analysis, opened(analysis)) is False
    assert notifications.incident_opened(analysis, opened(analysis)) is False
    assert notifications.incident_opened(other, opened(other)) is True
    wait_until(lambda: len(inbox.messages) == 2, 15, "two mails (one per analysis)")
    analysis.refresh_from_db()
    assert analysis.email_held == 2

    # The interval has passed: the next opening is mailed, with what was held back.
    Analysis.objects.filter(pk=analysis.pk).update(
        email_sent_at=timezone.now() - timedelta(minutes=11)
    )
    assert notifications.incident_opened(analysis, opened(analysis)) is True
    wait_until(lambda: len(inbox.messages) == 3, 15, "the next mail")
    body = inbox.messages[-1].get_payload(decode=True).decode()
    assert "2 more incidents opened on this analysis since the last mail" in body
    analysis.refresh_from_db()
    assert analysis.email_held == 0


@pytest.mark.django_db
def test_it_does_not_use_up_the_interval_when_nobody_is_subscribed(inbox):
    viewer = UserFactory(username="viewer")
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]))
    assert notifications.incident_opened(analysis, opened(analysis)) is False
    analysis.refresh_from_db()
    assert analysis.email_sent_at is None


@pytest.mark.django_db
def test_it_logs_a_mail_server_that_is_down_without_holding_up_the_caller(settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nothing listens
    settings.EMAIL_HOST_PASSWORD = "smtp-s3cret"
    viewer = UserFactory(username="viewer")
    analysis = AnalysisFactory(camera=CameraFactory(viewers=[viewer]))
    subscribe(viewer, analysis.camera)
    started = time.monotonic()
    assert notifications.incident_opened(analysis, opened(analysis)) is True
    assert time.monotonic() - started < 1.0, "the SMTP conversation is not the caller's"
    notifications.wait_idle()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "e-mail to 1 recipient(s) failed" in logged and "smtp-s3cret" not in logged


# --- the worker: an incident stored, then mailed ------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("tiny_settings")
def test_it_mails_when_the_worker_opens_an_incident(inbox, media, make_video):
    from detection.worker.loop import Worker
    from tests.support.worker import RecordingPublisher, file_analysis

    viewer = UserFactory(username="viewer")
    analysis = file_analysis(
        make_video("w.avi", frames=40), threshold=0.0001, incident_open_frames=2
    )
    analysis.camera.viewers.add(viewer)
    subscribe(viewer, analysis.camera)
    Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True).run()
    wait_until(lambda: len(inbox.messages) == 1, 15, "the incident mail")
    [incident] = analysis.incidents.all()
    body = inbox.messages[0].get_payload(decode=True).decode()
    assert (
        f"Incident {incident.pk} opened" in body and f"/incidents/?incident={incident.pk}" in body
    )
    assert inbox.to() == ["viewer@example.com"]


# --- the user's own opt-in ------------------------------------------------------------------


@pytest.mark.django_db
def test_it_lets_a_user_turn_e_mail_on_and_off_for_a_camera_they_see(logged_in, analysis, viewer):
    page = logged_in.get(analysis.get_absolute_url()).content.decode()
    assert "E-mail on incidents: off" in page
    url = reverse("detection:email_subscription", args=[analysis.camera_id])
    back = analysis.get_absolute_url()
    response = logged_in.post(url, {"email": "on", "next": back})
    assert response.status_code == 302 and response["Location"] == back
    assert IncidentSubscription.objects.get(user=viewer, camera=analysis.camera).email is True
    assert "E-mail on incidents: on" in logged_in.get(back).content.decode()
    logged_in.post(url, {"email": "off", "next": back})
    assert IncidentSubscription.objects.get(user=viewer, camera=analysis.camera).email is False
    assert logged_in.get(url).status_code == 405


@pytest.mark.django_db
def test_it_answers_404_for_a_camera_the_user_may_not_see(client, stranger, analysis):
    from tests.support.sessions import login

    login(client, stranger)
    url = reverse("detection:email_subscription", args=[analysis.camera_id])
    assert client.post(url, {"email": "on"}).status_code == 404
    assert not IncidentSubscription.objects.exists()


@pytest.mark.django_db
def test_it_requires_the_csrf_token_for_the_opt_in(viewer, analysis):
    from django.test import Client

    from tests.support.sessions import login

    client = Client(enforce_csrf_checks=True)
    login(client, viewer)
    url = reverse("detection:email_subscription", args=[analysis.camera_id])
    assert client.post(url, {"email": "on"}).status_code == 403
    assert not IncidentSubscription.objects.exists()
