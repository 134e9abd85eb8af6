"""The live pages' server side: the frame image, acknowledging, start/stop/re-run buttons, what
the analysis page and the dashboard hand to their scripts, and the vendored Chart.js."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import Group, Permission
from django.contrib.messages import get_messages
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from cameras.models import Camera
from detection.frames import latest_frame_path
from detection.live.publisher import group_name
from detection.models import Analysis, FrameScore, Incident
from tests.support import ROOT
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.html import Element, parse
from tests.support.sessions import login

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """MEDIA_ROOT, where the worker writes each analysis's latest frame, in tmp_path."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def scripts(page: Element) -> list[str]:
    """What the page loads: `<script src="..." defer></script>`."""
    return [script["src"] for script in page.find_all("script", src=True, defer=True)]


def _write_frame(analysis_id: int) -> Path:
    path = latest_frame_path(analysis_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG)
    return path


def _grant_change(user) -> None:
    user.user_permissions.add(Permission.objects.get(codename="change_analysis"))


# --- The latest frame image ---------------------------------------------------------------------


def test_it_builds_the_frame_path_from_the_id_inside_media_root(media_root):
    assert latest_frame_path(12) == Path(media_root) / "live" / "analysis-12.jpg"


@pytest.mark.parametrize("role", ["viewer", "operator", "stranger", "anonymous"])
def test_it_serves_the_latest_frame_only_to_those_who_may_see_it(
    client, analysis, viewer, stranger, role
):
    _write_frame(analysis.pk)
    users = {
        "viewer": viewer,
        "operator": UserFactory(groups=[Group.objects.get(name="operators")]),
        "stranger": stranger,
        "anonymous": None,
    }
    url = reverse("detection:frame", args=[analysis.pk])
    response = login(client, users[role]).get(url)
    if role in ("viewer", "operator"):
        assert response.status_code == 200
        assert response["Content-Type"] == "image/jpeg"
        assert response["Cache-Control"] == "no-store"
        assert b"".join(response.streaming_content) == JPEG
    elif role == "stranger":
        assert response.status_code == 404
    else:
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={url}"


def test_it_answers_404_until_the_worker_wrote_a_frame(client, analysis, viewer):
    login(client, viewer)
    assert client.get(reverse("detection:frame", args=[analysis.pk])).status_code == 404
    assert client.get(reverse("detection:frame", args=[analysis.pk + 999])).status_code == 404
    assert client.post(reverse("detection:frame", args=[analysis.pk])).status_code == 405


# --- Acknowledging incidents --------------------------------------------------------------------


@pytest.fixture
def incident(analysis):
    return IncidentFactory(analysis=analysis, end_time_s=None)


def test_it_lets_any_viewer_of_the_camera_acknowledge_and_nobody_else(
    client, incident, viewer, stranger
):
    """The decision (docs/security.md): acknowledging is part of watching a camera, so every
    viewer may do it without a model permission; it is recorded with who and when, deletes
    nothing, and users who cannot see the camera get the same 404 as for a missing one."""
    assert not viewer.has_perm("detection.change_incident")
    url = reverse("detection:acknowledge", args=[incident.pk])
    assert login(client, stranger).post(url).status_code == 404
    incident.refresh_from_db()
    assert incident.acknowledged_at is None
    assert login(client, viewer).post(url).status_code == 302
    incident.refresh_from_db()
    assert incident.acknowledged_by == viewer


def test_it_acknowledges_only_by_post(client, incident, viewer):
    login(client, viewer)
    assert client.get(reverse("detection:acknowledge", args=[incident.pk])).status_code == 405
    incident.refresh_from_db()
    assert incident.acknowledged_at is None


def test_it_enforces_csrf_on_acknowledge(incident, viewer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    url = reverse("detection:acknowledge", args=[incident.pk])
    assert client.post(url).status_code == 403
    incident.refresh_from_db()
    assert incident.acknowledged_at is None

    # The token from the page's own form works, as a form field or as the fetch header.
    page = client.get(incident.analysis.get_absolute_url()).content.decode()
    token = parse(page).find_all("input", name="csrfmiddlewaretoken")[0]["value"]
    response = client.post(url, HTTP_X_CSRFTOKEN=token, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["ok"] is True


def test_it_records_who_acknowledged_and_when_and_keeps_the_first(client, incident, viewer):
    colleague = UserFactory(username="colin")
    incident.analysis.camera.viewers.add(colleague)
    url = reverse("detection:acknowledge", args=[incident.pk])
    before = timezone.now()

    response = login(client, viewer).post(url)
    assert response.status_code == 302
    assert response["Location"] == incident.analysis.get_absolute_url()
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Incident acknowledged."]
    incident.refresh_from_db()
    assert incident.acknowledged_by == viewer
    first_time = incident.acknowledged_at
    assert first_time >= before

    response = login(client, colleague).post(url, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    data = response.json()
    assert data["ok"] is True and data["changed"] is False
    assert data["incident"]["id"] == incident.pk
    assert data["incident"]["acknowledged_by"] == "viewer"
    assert data["incident"]["acknowledged_at"] == first_time.isoformat()
    assert data["incident"]["open"] is True
    incident.refresh_from_db()
    assert (incident.acknowledged_by, incident.acknowledged_at) == (viewer, first_time)


def test_it_hides_incidents_of_hidden_cameras(client, incident, stranger):
    response = login(client, stranger).post(reverse("detection:acknowledge", args=[incident.pk]))
    assert response.status_code == 404
    incident.refresh_from_db()
    assert incident.acknowledged_at is None
    anonymous = Client().post(reverse("detection:acknowledge", args=[incident.pk]))
    assert anonymous.status_code == 302


def test_it_tells_live_pages_about_an_acknowledgement(
    client, incident, viewer, settings, django_capture_on_commit_callbacks
):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group_name(incident.analysis_id), channel)
    with django_capture_on_commit_callbacks(execute=True):
        login(client, viewer).post(reverse("detection:acknowledge", args=[incident.pk]))
    message = async_to_sync(layer.receive)(channel)
    assert message["type"] == "analysis.incident"
    assert message["id"] == incident.pk
    assert message["acknowledged_by"] == "viewer"


# --- Start, stop, re-run ------------------------------------------------------------------------

ACTIONS = ["queue", "stop", "rerun"]


@pytest.mark.parametrize("action", ACTIONS)
def test_it_lets_only_permitted_viewers_press_the_buttons(client, analysis, viewer, action):
    analysis.status = Analysis.Status.RUNNING if action == "stop" else Analysis.Status.STOPPED
    analysis.save()
    url = reverse(f"detection:{action}", args=[analysis.pk])

    assert Client().post(url).status_code == 302  # anonymous: to the login page
    assert login(client, viewer).post(url).status_code == 403  # sees it, may not change it
    assert client.get(url).status_code in (403, 405)

    outsider = UserFactory(username="outsider")
    _grant_change(outsider)
    assert login(client, outsider).post(url).status_code == 404  # hidden: like missing

    analysis.refresh_from_db()
    assert analysis.status == (
        Analysis.Status.RUNNING if action == "stop" else Analysis.Status.STOPPED
    )

    _grant_change(viewer)
    viewer = type(viewer).objects.get(pk=viewer.pk)  # fresh permission cache
    response = login(client, viewer).post(url)
    assert response.status_code == 302
    assert response["Location"] == analysis.get_absolute_url()
    assert client.get(url).status_code == 405


def test_it_queues_and_stops_from_the_page(client, analysis, viewer):
    _grant_change(viewer)
    login(client, viewer)
    analysis.status = Analysis.Status.FAILED
    analysis.error_message = "camera gone"
    analysis.save()

    response = client.post(reverse("detection:queue", args=[analysis.pk]))
    analysis.refresh_from_db()
    assert (analysis.status, analysis.error_message) == (Analysis.Status.QUEUED, "")
    assert "Queued" in next(str(m) for m in get_messages(response.wsgi_request))

    again = client.post(reverse("detection:queue", args=[analysis.pk]))
    assert "already queued" in [str(m) for m in get_messages(again.wsgi_request)][-1]

    Analysis.objects.filter(pk=analysis.pk).update(
        status=Analysis.Status.RUNNING,
        lease_owner="worker-1",
        lease_expires_at=timezone.now(),
    )
    client.post(reverse("detection:stop", args=[analysis.pk]))
    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.STOPPED
    assert (analysis.lease_owner, analysis.lease_expires_at) == ("", None)


def test_it_reruns_from_the_page(client, analysis, viewer):
    _grant_change(viewer)
    other = AnalysisFactory(camera=analysis.camera)
    FrameScoreFactory.create_batch(3, analysis=analysis)
    FrameScoreFactory(analysis=other)
    IncidentFactory(analysis=analysis)
    Analysis.objects.filter(pk=analysis.pk).update(
        status=Analysis.Status.COMPLETED, frames_scored=3, peak_score=0.9, progress=1.0
    )
    response = login(client, viewer).post(reverse("detection:rerun", args=[analysis.pk]))
    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.QUEUED
    assert (analysis.frames_scored, analysis.peak_score, analysis.progress) == (0, None, 0.0)
    assert not FrameScore.objects.filter(analysis=analysis).exists()
    assert not Incident.objects.filter(analysis=analysis).exists()
    assert FrameScore.objects.filter(analysis=other).count() == 1
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Re-queued; deleted 3 scores and 1 incident."
    ]


# --- The analysis page --------------------------------------------------------------------------


def test_it_gives_the_live_page_its_script_socket_and_frame(client, analysis, viewer):
    analysis.status = Analysis.Status.RUNNING
    analysis.last_frame_index = 40
    analysis.save()
    login(client, viewer)
    content = client.get(analysis.get_absolute_url()).content.decode()
    assert "/static/vendor/chart.umd.min.js" in scripts(parse(content))
    assert "/static/js/live.js" in scripts(parse(content))
    assert "/static/js/analysis.js" in scripts(parse(content))
    assert f'data-ws-url="/ws/analyses/{analysis.pk}/"' in content
    assert 'data-mode="live"' in content
    assert 'data-threshold="0.6"' in content
    assert 'data-role="live-state"' in content
    assert 'id="series-data"' not in content  # the socket brings the scores
    assert "No frame yet" in content
    assert "Download chart as PNG" in content
    assert " onclick=" not in content and "<script>" not in content  # CSP-friendly

    _write_frame(analysis.pk)
    content = client.get(analysis.get_absolute_url()).content.decode()
    assert f'src="{reverse("detection:frame", args=[analysis.pk])}?v=40"' in content


def test_it_lists_incidents_with_acknowledge_forms(client, analysis, viewer):
    done = IncidentFactory(
        analysis=analysis, acknowledged_by=viewer, acknowledged_at=timezone.now()
    )
    pending = IncidentFactory(analysis=analysis, end_time_s=None)
    content = login(client, viewer).get(analysis.get_absolute_url()).content.decode()
    ack = reverse("detection:acknowledge", args=[pending.pk])
    rows = [row.attrs for row in parse(content).find_all("tr")]
    assert {"data-incident-id": str(pending.pk), "class": "open"} in rows
    assert {"data-incident-id": str(done.pk)} in rows
    assert f'action="{ack}"' in content
    assert f'action="{reverse("detection:acknowledge", args=[done.pk])}"' not in content
    assert f'data-ack-url="{reverse("detection:acknowledge", args=[0])}"' in content


def test_it_shows_a_finished_file_analysis_with_its_series_metadata_and_exports(client, viewer):
    analysis = AnalysisFactory(
        camera=CameraFactory(kind=Camera.Kind.FILE, source="/v/a.mp4", viewers=[viewer]),
        status=Analysis.Status.COMPLETED,
        threshold=0.5,
        metadata={
            "total_frames": 5000,
            "max_anomaly_score": 0.97,
            "is_anomaly_detected": True,
            "warnings": ["header fps 0"],
            "std_score": 0.123456789,
        },
    )
    FrameScore.objects.bulk_create(
        FrameScore(
            analysis=analysis,
            frame_index=i,
            time_s=i / 10,
            score=0.97 if i == 3333 else 0.2 + (i % 7) / 100,
            normal_similarity=0.3,
            anomaly_similarity=0.2,
        )
        for i in range(5000)
    )
    content = login(client, viewer).get(analysis.get_absolute_url()).content.decode()
    assert 'data-mode="results"' in content
    page = parse(content)
    series = json.loads(page.one("script", id="series-data", type="application/json").raw_text)
    assert series["total"] == 5000 and series["decimated"] is True
    assert 1000 < len(series["points"]) <= 2000
    assert series["peak"] == {"i": 3333, "t": 333.3, "s": 0.97}
    assert {"i": 3333, "t": 333.3, "s": 0.97} in series["points"]
    frames = [p["i"] for p in series["points"]]
    assert frames == sorted(frames) and frames[0] == 0
    # Human labels, the stored key as the row's title, collapsed until opened.
    rows = page.find_all("th", scope="row")
    metadata = {th["title"]: th.parent.one("td").text for th in rows}
    labels = {th["title"]: th.text for th in rows}
    for key in ("total_frames", "max_anomaly_score", "is_anomaly_detected", "warnings"):
        assert key in metadata
    assert labels["total_frames"] == "Frames decoded"
    assert labels["max_anomaly_score"] == "Peak score"
    assert metadata["std_score"] == "0.123457"
    assert metadata["warnings"] == "header fps 0"
    assert page.one("details", class_="metadata").get("open") is None
    assert "Download chart as PNG" in content
    assert f'href="{reverse("detection:scores_csv", args=[analysis.pk])}"' in content
    assert f'href="{reverse("detection:scores_json", args=[analysis.pk])}"' in content


def test_it_draws_a_short_series_whole(client, viewer):
    analysis = AnalysisFactory(
        camera=CameraFactory(kind=Camera.Kind.FILE, source="/v/b.mp4", viewers=[viewer]),
        status=Analysis.Status.COMPLETED,
    )
    for i in range(5):
        FrameScoreFactory(analysis=analysis, frame_index=i, score=i / 10)
    context = login(client, viewer).get(analysis.get_absolute_url()).context
    assert context["series"]["decimated"] is False
    assert [p["s"] for p in context["series"]["points"]] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_it_offers_start_stop_and_rerun_only_to_those_allowed(client, analysis, viewer):
    url = analysis.get_absolute_url()
    content = login(client, viewer).get(url).content.decode()
    assert reverse("detection:rerun", args=[analysis.pk]) not in content

    _grant_change(viewer)
    content = login(client, type(viewer).objects.get(pk=viewer.pk)).get(url).content.decode()
    queue = reverse("detection:queue", args=[analysis.pk])
    stop = reverse("detection:stop", args=[analysis.pk])
    forms = {form["action"]: form for form in parse(content).find_all("form", action=True)}
    # A draft can be started, not stopped; the script swaps them as the status changes.
    start = forms[queue]
    assert start.get("class") == "inline" and start.get("data-when") and "hidden" not in start.attrs
    assert forms[stop].get("class") == "inline"
    assert forms[stop].get("data-when") == "queued running" and "hidden" in forms[stop].attrs
    assert f'action="{reverse("detection:rerun", args=[analysis.pk])}"' in content
    assert "data-confirm=" in content


# --- The dashboard ------------------------------------------------------------------------------


def test_it_gives_each_dashboard_analysis_a_chart_and_files_in_progress_a_bar(client, viewer):
    stream = CameraFactory(name="Door", viewers=[viewer])
    upload = CameraFactory(name="clip", kind=Camera.Kind.FILE, source="/v/c.mp4", viewers=[viewer])
    CameraFactory(name="Elsewhere")
    live = AnalysisFactory(camera=stream, status=Analysis.Status.RUNNING)
    running = AnalysisFactory(camera=upload, status=Analysis.Status.RUNNING, progress=0.42)
    queued = AnalysisFactory(camera=upload, status=Analysis.Status.QUEUED)
    done = AnalysisFactory(camera=upload, status=Analysis.Status.COMPLETED, progress=1.0)

    content = login(client, viewer).get(reverse("dashboard")).content.decode()
    page = parse(content)
    assert content.count('class="card camera"') == 2
    assert "Elsewhere" not in content
    assert len(page.find_all("canvas")) == 4
    for a in (live, running, queued, done):
        assert f'data-ws-url="/ws/analyses/{a.pk}/"' in content
    items = {int(li["data-analysis"]): li for li in page.find_all("li", data_analysis=True)}
    bars = {pk: [bar.attrs for bar in item.find_all("progress")] for pk, item in items.items()}
    assert {"max": "100", "value": "42", "data-role": "progress"} in bars[running.pk]
    assert "42% done" in items[running.pk].text
    assert items[queued.pk].find_all("progress", max="100", value="0")
    assert bars[done.pk] == [] and "100% done" in items[done.pk].text
    assert bars[live.pk] == [] and "% done" not in items[live.pk].text
    assert "/static/js/dashboard.js" in scripts(page)


# --- Chart.js, vendored and collected -----------------------------------------------------------


def test_it_vendors_chart_js_with_its_licence():
    found = finders.find("vendor/chart.umd.min.js")
    assert found and Path(found).read_text().startswith("/*!\n * Chart.js v4.")
    assert "sourceMappingURL" not in Path(found).read_text()[-200:]  # the map is not shipped
    assert "MIT License" in Path(finders.find("vendor/chart.js.LICENSE.md")).read_text()
    for script in ("js/live.js", "js/analysis.js", "js/dashboard.js"):
        assert finders.find(script), script


def test_it_collects_static_files_with_debug_off(tmp_path):
    script = (
        "import sys, django\n"
        "from django.conf import settings\n"
        "settings.STATIC_ROOT = sys.argv[1]\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "from django.templatetags.static import static\n"
        "call_command('collectstatic', '--noinput', verbosity=0)\n"
        "print(static('vendor/chart.umd.min.js'))\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "localhost",
        "CHANNELS_LAYER": "memory",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    static_root = tmp_path / "static"
    result = subprocess.run(
        [sys.executable, "-c", script, str(static_root)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"/static/vendor/chart\.umd\.min\.[0-9a-f]{12}\.js", url), url
    hashed = static_root / url.removeprefix("/static/")
    assert hashed.exists() and Path(f"{hashed}.gz").exists()
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    assert "js/analysis.js" in manifest["paths"]
