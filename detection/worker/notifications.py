"""E-mail when an incident opens, to the people who asked for it and may see the camera.

Who gets a mail: users with an `IncidentSubscription` (email on) for the analysis's camera,
active, with an address, and allowed to see the camera by the one access rule
(cameras.access) at the time the incident opens. Opting in is not access.

How often: at most one mail per analysis every DETECTION_EMAIL_INTERVAL_MINUTES. Incidents
that open in between are counted on the analysis (`email_held`) and the next mail says how
many there were, so a flapping camera costs one mail per interval, not one per flap.

Never stalling scoring: the worker decides (a few small queries, after the store
transaction committed) and hands the built messages to a background thread that talks to
the SMTP server (Django's e-mail framework, EMAIL_* settings, EMAIL_TIMEOUT). A server that
is down costs a log line; the mail is not retried (the incident is on the portal anyway).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.db import DatabaseError
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from cameras.access import visible_cameras
from detection.models import Analysis, Incident

log = logging.getLogger(__name__)

# One sending thread: mails go out in order, and a slow server delays only mail.
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="email")


def recipients(analysis: Analysis) -> list[Any]:
    """The users to mail about an incident of `analysis`, by the rule above."""
    User = get_user_model()
    users = User.objects.filter(
        is_active=True,
        incident_subscriptions__camera_id=analysis.camera_id,
        incident_subscriptions__email=True,
    ).exclude(email="")
    # The access rule per user (a handful of subscribers): the same function every page uses.
    return [u for u in users if visible_cameras(u).filter(pk=analysis.camera_id).exists()]


def incident_link(analysis: Analysis, incident: Incident) -> str:
    """The incidents page showing this one incident (its clip, once written, and the
    acknowledge and feedback buttons); absolute when DETECTION_PUBLIC_URL is set."""
    path = f"{reverse('detection:incidents')}?incident={int(incident.pk)}"
    return settings.DETECTION_PUBLIC_URL.rstrip("/") + path


def take_turn(analysis_id: int) -> int | None:
    """Claim this analysis's next mail: the number of openings held back since the last
    one, or None while the interval since the last mail has not passed (counted)."""
    interval = timedelta(minutes=settings.DETECTION_EMAIL_INTERVAL_MINUTES)
    now = timezone.now()
    row = Analysis.objects.filter(pk=analysis_id).values("email_sent_at", "email_held").first()
    if row is None:
        return None
    sent_at, held = row["email_sent_at"], row["email_held"]
    if sent_at is None or now - sent_at >= interval:
        # Compare-and-set on the stamp: of two processes, one sends.
        same = Q(email_sent_at__isnull=True) if sent_at is None else Q(email_sent_at=sent_at)
        if Analysis.objects.filter(same, pk=analysis_id).update(email_sent_at=now, email_held=0):
            return held
    Analysis.objects.filter(pk=analysis_id).update(email_held=F("email_held") + 1)
    return None


def build_messages(
    analysis: Analysis, incident: Incident, users: list[Any], held: int
) -> list[EmailMessage]:
    camera = analysis.camera.name
    subject = f"[clipwatch] Incident on {camera}: {analysis.name}"
    lines = [
        f"Incident {incident.pk} opened on camera {camera!r} (analysis {analysis.name!r}).",
        "",
        f"Started:    {timezone.localtime(incident.started_at):%Y-%m-%d %H:%M:%S %Z}",
        f"Peak score: {incident.peak_score:.3f} (threshold {analysis.threshold_in_use:.2f})",
        "",
        f"Open it: {incident_link(analysis, incident)}",
    ]
    if held:
        minutes = settings.DETECTION_EMAIL_INTERVAL_MINUTES
        lines += [
            "",
            f"{held} more incident{'s' if held != 1 else ''} opened on this analysis since the "
            f"last mail (at most one mail every {minutes} minutes per analysis).",
        ]
    lines += [
        "",
        "You get this because you turned on e-mail for this camera; turn it off on the "
        "analysis page.",
    ]
    body = "\n".join(lines) + "\n"
    # One message per person: recipients do not see each other's addresses.
    return [
        EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email]) for user in users
    ]


def incident_opened(analysis: Analysis, incident: Incident) -> bool:
    """Queue the mail about a newly opened incident; True when one was queued.

    Called by the worker after the store transaction; never raises for a database that is
    away or a mail server that is down (both logged)."""
    try:
        users = recipients(analysis)
        if not users:
            return False
        held = take_turn(analysis.pk)
        if held is None:
            log.info("analysis %s: incident %s not mailed (rate limit)", analysis.pk, incident.pk)
            return False
        messages = build_messages(analysis, incident, users, held)
    except DatabaseError as exc:
        log.warning("analysis %s: incident %s not mailed: %s", analysis.pk, incident.pk, exc)
        return False
    # Built here, with the settings of now; it connects only in the sending thread.
    connection = get_connection(timeout=settings.EMAIL_TIMEOUT)
    _pool.submit(_send, connection, messages, incident.pk)
    return True


def _send(connection: Any, messages: list[EmailMessage], incident_id: int) -> None:
    try:
        sent = connection.send_messages(messages)
    # SMTPException, refused connections, timeouts and TLS errors are all OSErrors.
    except (OSError, ValueError) as exc:  # logged, dropped
        log.warning(
            "incident %s: e-mail to %d recipient(s) failed: %s: %s",
            incident_id,
            len(messages),
            type(exc).__name__,
            exc,
        )
        return
    log.info("incident %s: e-mailed %d recipient(s)", incident_id, sent or 0)


def wait_idle(timeout_s: float = 10.0) -> None:
    """Wait (bounded) until mails queued so far have been handed to the server."""
    _pool.submit(lambda: None).result(timeout=timeout_s)
