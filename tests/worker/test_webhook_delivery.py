"""Signed, logged, retried webhooks against a real local receiver that checks signatures.

The receiver (tests/support/webhooks.py) verifies each POST exactly as docs/deployment.md
("Verifying a webhook") tells receivers to (`verify` there is that snippet), fails the
first attempts, then accepts. The worker's side runs as in `run_detector`: `enqueue`
after an incident is stored, `step` on every tick, the log (`WebhookDelivery`) in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from ipaddress import ip_network

import pytest
from django.utils import timezone

from detection.models import WebhookDelivery
from detection.worker import webhooks
from tests.support.factories import AnalysisFactory, IncidentFactory
from tests.support.waiting import wait_until
from tests.support.webhooks import Receiver, verify

LOOPBACK = [ip_network("127.0.0.0/8"), ip_network("::1/128")]
pytestmark = pytest.mark.django_db
Status = WebhookDelivery.Status


@pytest.fixture(autouse=True)
def fast_retries(settings, monkeypatch) -> Iterator[None]:
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = LOOPBACK
    settings.DETECTION_WEBHOOK_RETRY_SECONDS = 0.2
    monkeypatch.setattr(webhooks, "SCAN_S", 0.0)
    # Row ids start again in each test's database: what an earlier test left blocked in
    # this process would be about other rows.
    webhooks._dispatcher.blocked.clear()
    yield
    webhooks.drain()  # nothing of this test is left in flight for the next
    webhooks._dispatcher.blocked.clear()


def event(kind: str = "incident.opened") -> dict[str, object]:
    return {"event": kind, "incident": {"id": 1}}


def run_until(condition, what: str, timeout: float = 20):
    """Drive the worker's step (as its loop does) until `condition()` holds."""

    def stepped():
        webhooks.step()
        return condition()

    return wait_until(stepped, timeout, what, every=0.05)


def delivered(delivery: WebhookDelivery) -> bool:
    delivery.refresh_from_db()
    return delivery.status != Status.PENDING


@pytest.mark.django_db
def test_it_signs_each_attempt_and_retries_with_backoff_until_the_receiver_accepts():
    with Receiver(failures=2, fail_status=503) as receiver:
        receiver.secret = webhooks.new_secret()  # as the admin made it
        analysis = AnalysisFactory(webhook_url=receiver.url, webhook_secret=receiver.secret)
        incident = IncidentFactory(analysis=analysis)
        webhooks.enqueue(analysis, incident, event())
        [delivery] = WebhookDelivery.objects.all()
        run_until(lambda: delivered(delivery), "the delivery to succeed")

    assert [r["verified"] for r in receiver.requests] == [True, True, True]
    first, second, third = (r["at"] for r in receiver.requests)
    # Exponential backoff: 0.2 s after the first failure, 0.4 s after the second (at least).
    assert second - first >= 0.2 and third - second >= 0.4
    headers = [r["headers"] for r in receiver.requests]
    assert {h["X-Clipwatch-Delivery"] for h in headers} == {str(delivery.pk)}
    assert {h["X-Clipwatch-Event"] for h in headers} == {"incident.opened"}
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 204)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    assert delivery.last_error == "" and delivery.incident == incident


@pytest.mark.django_db
@pytest.mark.parametrize("status", [429, 500, 502])
def test_it_retries_overload_and_server_errors(status):
    with Receiver(failures=1, fail_status=status) as receiver:
        analysis = AnalysisFactory(webhook_url=receiver.url)
        webhooks.enqueue(analysis, None, event())
        [delivery] = WebhookDelivery.objects.all()
        run_until(lambda: delivered(delivery), "the retry")
    assert (delivery.status, delivery.attempts) == ("delivered", 2)


@pytest.mark.django_db
@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_it_does_not_retry_other_client_errors(status):
    with Receiver(failures=10, fail_status=status) as receiver:
        analysis = AnalysisFactory(webhook_url=receiver.url)
        webhooks.enqueue(analysis, None, event())
        [delivery] = WebhookDelivery.objects.all()
        run_until(lambda: delivered(delivery), "the final answer")
        for _ in range(5):  # later steps start nothing more
            webhooks.step()
    assert len(receiver.requests) == 1
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 1, status)
    assert delivery.last_error == f"HTTP {status}" and delivery.next_attempt_at is None


@pytest.mark.django_db
def test_it_gives_up_after_the_attempts_and_keeps_secrets_out_of_the_log(settings, caplog):
    settings.DETECTION_WEBHOOK_ATTEMPTS = 3
    with Receiver(failures=10, fail_status=500) as receiver:
        url = f"http://hook:s3cret@127.0.0.1:{receiver.port}/hook?token=t0ken&site=gate"
        analysis = AnalysisFactory(webhook_url=url)
        webhooks.enqueue(analysis, None, event())
        [delivery] = WebhookDelivery.objects.all()
        run_until(lambda: delivered(delivery), "giving up")
    assert len(receiver.requests) == 3
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 500)
    # Unreachable, with the URL in the reason: redacted there too.
    analysis.webhook_url = "http://t0k3n-as-user@127.0.0.1:9/hook?token=t0ken"
    analysis.save(update_fields=["webhook_url"])
    webhooks.enqueue(analysis, None, event("incident.closed"))
    refused = WebhookDelivery.objects.get(event="incident.closed")
    run_until(lambda: refused.refresh_from_db() or refused.attempts >= 1, "a failed attempt")
    analysis.refresh_from_db()
    assert analysis.webhook_secret.startswith("whsec_"), "made when first needed"
    stored = " ".join(WebhookDelivery.objects.values_list("last_error", flat=True))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP 500" in stored and "***@127.0.0.1" in logged
    for secret in ("s3cret", "t0ken", "t0k3n-as-user", analysis.webhook_secret):
        assert secret not in stored and secret not in logged


@pytest.mark.django_db
def test_it_resumes_due_deliveries_from_the_log_after_a_restart():
    with Receiver() as receiver:
        analysis = AnalysisFactory(webhook_url=receiver.url)
        # As a worker that died halfway leaves them: one attempt made, one claimed and
        # lapsed, one due later.
        past = timezone.now() - timedelta(seconds=1)
        failed_once = WebhookDelivery.objects.create(
            analysis=analysis, event="incident.opened", payload=event(), attempts=1,
            last_status_code=503, next_attempt_at=past,
        )  # fmt: skip
        later = WebhookDelivery.objects.create(
            analysis=AnalysisFactory(webhook_url=receiver.url), event="incident.opened",
            payload=event(), next_attempt_at=timezone.now() + timedelta(hours=1),
        )  # fmt: skip
        run_until(lambda: delivered(failed_once), "the resumed delivery")
        later.refresh_from_db()
    assert (failed_once.status, failed_once.attempts) == ("delivered", 2)
    assert later.status == "pending" and later.attempts == 0, "not due yet: left alone"
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_it_keeps_an_analysis_events_in_order_while_one_is_retried():
    with Receiver(failures=1) as receiver:
        analysis = AnalysisFactory(webhook_url=receiver.url)
        incident = IncidentFactory(analysis=analysis)
        webhooks.enqueue(analysis, incident, event("incident.opened"))
        wait_until(lambda: receiver.requests, 10, "the first attempt")
        webhooks.enqueue(analysis, incident, event("incident.closed"))
        run_until(
            lambda: WebhookDelivery.objects.filter(status=Status.DELIVERED).count() == 2,
            "both deliveries",
        )
    events = [r["event"] for r in receiver.requests]
    assert events == ["incident.opened", "incident.opened", "incident.closed"]


@pytest.mark.django_db
def test_it_marks_a_delivery_failed_when_the_url_was_removed():
    analysis = AnalysisFactory(webhook_url="http://127.0.0.1:9/hook", webhook_secret="whsec_x")
    delivery = WebhookDelivery.objects.create(
        analysis=analysis, event="incident.opened", payload=event(), next_attempt_at=timezone.now()
    )
    analysis.webhook_url = ""
    analysis.save(update_fields=["webhook_url"])
    run_until(lambda: delivered(delivery), "the delivery to be given up")
    assert delivery.status == "failed" and "removed" in delivery.last_error


def test_it_rejects_a_tampered_body_a_wrong_secret_and_an_old_timestamp():
    body = b'{"event": "incident.opened"}'
    headers = webhooks.signed_headers("whsec_k", body)
    assert verify("whsec_k", headers, body)
    assert not verify("whsec_k", headers, body.replace(b"opened", b"closed"))
    assert not verify("whsec_other", headers, body)
    old = int(headers["X-Clipwatch-Timestamp"]) - 3600
    stale = {"X-Clipwatch-Timestamp": str(old), **{"X-Clipwatch-Signature": ""}}
    stale["X-Clipwatch-Signature"] = webhooks.signature("whsec_k", old, body)
    assert not verify("whsec_k", stale, body), "a replay an hour later"


# --- the admin ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_makes_the_secret_when_a_url_is_set_and_shows_it_once(admin_client, settings):
    from django.urls import reverse

    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = [ip_network("10.0.0.0/8")]
    analysis = AnalysisFactory()
    url = reverse("admin:detection_analysis_change", args=[analysis.pk])
    from tests.detection.test_admin import form_data

    data = {**form_data(admin_client.get(url)), "webhook_url": "http://10.0.0.7:9000/hook"}
    response = admin_client.post(url, data, follow=True)
    assert response.status_code == 200, response.content[:2000]
    analysis.refresh_from_db()
    secret = analysis.webhook_secret
    assert secret.startswith("whsec_")
    shown = [str(m) for m in response.context["messages"]]
    assert any(secret in m and "not shown again" in m for m in shown), shown
    page = admin_client.get(url).content.decode()
    assert secret not in page and f"…{secret[-4:]}" in page

    changelist = reverse("admin:detection_analysis_changelist")
    response = admin_client.post(
        changelist,
        {"action": "regenerate_webhook_secret", "_selected_action": [analysis.pk]},
        follow=True,
    )
    analysis.refresh_from_db()
    assert analysis.webhook_secret != secret
    assert any(analysis.webhook_secret in str(m) for m in response.context["messages"])


@pytest.mark.django_db
def test_it_shows_the_delivery_log_read_only_in_the_admin(admin_client):
    from django.urls import reverse

    delivery = WebhookDelivery.objects.create(
        analysis=AnalysisFactory(),
        event="incident.opened",
        payload=event(),
        status=Status.FAILED,
        attempts=5,
        last_status_code=503,
        last_error="HTTP 503",
    )
    listing = admin_client.get(reverse("admin:detection_webhookdelivery_changelist"))
    assert listing.status_code == 200 and "incident.opened" in listing.content.decode()
    page = admin_client.get(reverse("admin:detection_webhookdelivery_change", args=[delivery.pk]))
    assert page.status_code == 200
    assert "HTTP 503" in page.content.decode() and 'name="_save"' not in page.content.decode()
    add = admin_client.get(reverse("admin:detection_webhookdelivery_add"))
    assert add.status_code == 403
