"""The Django admin: operators' pages, validation, actions and their confirmations."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from cameras.models import Camera
from detection.models import Analysis, FrameScore, Incident
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    GroupFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.html import parse

pytestmark = pytest.mark.django_db

Status = Analysis.Status

CAMERA_ADD = reverse("admin:cameras_camera_add")
ANALYSIS_CHANGELIST = reverse("admin:detection_analysis_changelist")
INCIDENT_CHANGELIST = reverse("admin:detection_incident_changelist")


def camera_form(**overrides: object) -> dict[str, object]:
    """The POST body of the camera add page, inline management form included."""
    data: dict[str, object] = {
        "name": "Gate",
        "kind": Camera.Kind.STREAM,
        "source": "rtsp://10.0.0.5:554/stream1",
        "enabled": "on",
        "description": "",
        "analyses-TOTAL_FORMS": "0",
        "analyses-INITIAL_FORMS": "0",
        "analyses-MIN_NUM_FORMS": "0",
        "analyses-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data


def run_action(client, url: str, action: str, objs, **extra: str):
    return client.post(url, {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objs], **extra})


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# --- pages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "admin:cameras_camera_changelist",
        "admin:cameras_camera_add",
        "admin:detection_analysis_changelist",
        "admin:detection_analysis_add",
        "admin:detection_incident_changelist",
        "admin:detection_incident_add",
    ],
)
def test_it_renders_changelist_and_add_pages_for_a_superuser(admin_client, name):
    IncidentFactory()  # one row in every changelist
    response = admin_client.get(reverse(name))
    assert response.status_code == 200
    assert b"clipwatch administration" in response.content


def test_it_renders_change_pages_for_a_superuser(admin_client):
    incident = IncidentFactory(thumbnail=None)
    analysis = incident.analysis
    AnalysisFactory(camera=analysis.camera, name="Second look")
    urls = [
        reverse("admin:cameras_camera_change", args=[analysis.camera.pk]),
        reverse("admin:detection_analysis_change", args=[analysis.pk]),
        reverse("admin:detection_incident_change", args=[incident.pk]),
    ]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url

    camera_page = admin_client.get(urls[0]).content.decode()
    # The inline lists both analyses with links to their admin pages.
    assert "Second look" in camera_page
    assert reverse("admin:detection_analysis_change", args=[analysis.pk]) in camera_page
    assert "SelectFilter2.js" in camera_page  # filter_horizontal for the sharing fields


def test_it_counts_analyses_and_links_to_the_live_page_in_the_lists(admin_client):
    camera = CameraFactory(name="Dock")
    first = AnalysisFactory(camera=camera, progress=0.425, frames_scored=17, peak_score=0.8123)
    AnalysisFactory(camera=camera)

    cameras = admin_client.get(reverse("admin:cameras_camera_changelist")).content.decode()
    counts = [td.text for td in parse(cameras).find_all("td", class_="field-analysis_count")]
    assert "2" in counts

    analyses = admin_client.get(ANALYSIS_CHANGELIST).content.decode()
    assert "42%" in analyses
    assert "0.812" in analyses
    live_links = parse(analyses).find_all(
        "a", href=first.get_absolute_url(), target="_blank", rel="noopener"
    )
    assert any(link.text.startswith("Live page") for link in live_links)


def test_it_searches_and_filters_cameras(admin_client):
    CameraFactory(name="Harbour", description="north pier")
    CameraFactory(name="Lobby", kind=Camera.Kind.WEBCAM, source="0")
    url = reverse("admin:cameras_camera_changelist")

    found = admin_client.get(url, {"q": "pier"})
    assert [c.name for c in found.context["cl"].result_list] == ["Harbour"]
    webcams = admin_client.get(url, {"kind__exact": "webcam"})
    assert [c.name for c in webcams.context["cl"].result_list] == ["Lobby"]


def test_it_sends_non_staff_users_to_the_admin_login(client):
    user = UserFactory(username="viewer")
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_it_does_not_register_frame_scores(admin_client):
    assert not admin.site.is_registered(FrameScore)
    assert admin.site.is_registered(Camera)
    assert admin.site.is_registered(Analysis)
    assert admin.site.is_registered(Incident)
    assert admin_client.get("/admin/detection/framescore/").status_code == 404


# --- cameras ---------------------------------------------------------------------------


def assert_source_error(admin_client, kind: str, source: str, message: str) -> None:
    """The add form comes back with `message` on the source field alone; nothing saved."""
    response = admin_client.post(CAMERA_ADD, camera_form(kind=kind, source=source))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["source"]
    assert message in " ".join(errors["source"])
    assert Camera.objects.count() == 0


@pytest.mark.parametrize(
    ("kind", "source", "message"),
    [
        (Camera.Kind.STREAM, "ftp://example.com/cam.mp4", "must use rtsp, rtsps, http or https"),
        (Camera.Kind.FILE, "/etc/passwd", "is outside the directories"),
        (Camera.Kind.FILE, "relative/clip.mp4", "is not an absolute path"),
        (Camera.Kind.WEBCAM, "-1", "cannot be negative"),
    ],
)
def test_it_shows_a_bad_source_as_a_field_error_and_saves_nothing(
    admin_client, kind, source, message
):
    assert_source_error(admin_client, kind, source, message)


@pytest.mark.parametrize("source", ["rtsp://nvr:554/stream1", "rtsp://cam_1.local/live"])
def test_it_accepts_lan_camera_host_names_the_worker_accepts(admin_client, source):
    response = admin_client.post(CAMERA_ADD, camera_form(source=source))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Camera.objects.get().source == source


@pytest.mark.parametrize(
    ("kind", "source", "message"),
    [
        (Camera.Kind.STREAM, "http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        (Camera.Kind.STREAM, "http://[::1]:8080/mjpg", "a loopback address"),
        (Camera.Kind.STREAM, "http://127.0.0.1:8000/admin/", "a loopback address"),
        (Camera.Kind.WEBCAM, "\u00b2", "device index"),
    ],
)
def test_it_refuses_internal_stream_targets_and_odd_digits_as_field_errors(
    admin_client, settings, kind, source, message
):
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = []  # production's default
    assert_source_error(admin_client, kind, source, message)


def test_it_adds_a_stream_camera_and_records_who_created_it(admin_client, admin_user):
    viewer = UserFactory(username="vera")
    group = GroupFactory(name="night-shift")
    response = admin_client.post(
        CAMERA_ADD,
        camera_form(
            source="  rtsps://cams.example.com/gate  ",
            viewers=[viewer.pk],
            viewer_groups=[group.pk],
        ),
    )
    assert response.status_code == 302
    camera = Camera.objects.get()
    assert camera.created_by == admin_user
    assert camera.source == "rtsps://cams.example.com/gate"
    assert list(camera.viewers.all()) == [viewer]
    assert list(camera.viewer_groups.all()) == [group]
    assert camera.status == Camera.Status.OFFLINE


def test_it_accepts_a_file_camera_inside_the_allowed_directories(
    admin_client, settings, tmp_path: Path, make_video
):
    videos = tmp_path / "videos"
    videos.mkdir()
    clip = make_video("clip.mp4", frames=2).rename(videos / "clip.mp4")
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"\x00" * 16)
    settings.DETECTION_VIDEO_DIRS = [videos]

    sneaky = admin_client.post(
        CAMERA_ADD, camera_form(kind=Camera.Kind.FILE, source=f"{videos}/../elsewhere.mp4")
    )
    assert "source" in sneaky.context["adminform"].form.errors
    assert Camera.objects.count() == 0

    response = admin_client.post(CAMERA_ADD, camera_form(kind=Camera.Kind.FILE, source=str(clip)))
    assert response.status_code == 302
    assert Camera.objects.get().source == str(clip)


def test_it_keeps_the_worker_status_fields_read_only(admin_client):
    camera = CameraFactory(status=Camera.Status.FAILED, last_error="timeout", reconnect_count=4)
    url = reverse("admin:cameras_camera_change", args=[camera.pk])
    response = admin_client.post(
        url,
        camera_form(
            name="Renamed",
            source=camera.source,
            status=Camera.Status.ONLINE,
            last_error="",
            reconnect_count="0",
        ),
    )
    assert response.status_code == 302
    camera.refresh_from_db()
    assert camera.name == "Renamed"
    assert (camera.status, camera.last_error, camera.reconnect_count) == ("failed", "timeout", 4)


# --- analyses --------------------------------------------------------------------------


def analysis_form(camera: Camera, **overrides: object) -> dict[str, object]:
    """The POST body of the analysis add page as its defaults leave it ("Start now" ticked)."""
    data: dict[str, object] = {
        "camera": camera.pk,
        "name": "Crowd",
        "normal_prompts": "people walking\nan empty square",
        "anomaly_prompts": "a fight",
        "threshold": "0.7",
        "sampling_fps": "2",
        "window_size": "60",
        "smoothing_window": "1",
        "incident_open_frames": "3",
        "incident_close_frames": "5",
        "hysteresis": "0.05",
        "skip_black_frames": "on",
        "motion_gating": "on",
        "rescore_interval_s": "3",
        "mode": "prompts",
        "learning_seconds": "0",
        "start_now": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_it_adds_an_analysis_and_records_who_created_it(admin_client, admin_user):
    data = analysis_form(CameraFactory())
    response = admin_client.post(reverse("admin:detection_analysis_add"), data)
    assert response.status_code == 302
    analysis = Analysis.objects.get()
    assert analysis.created_by == admin_user
    assert (analysis.status, analysis.threshold, analysis.sampling_fps) == ("queued", 0.7, 2.0)

    # The status is the worker's and the actions': a posted one is ignored.
    blank = admin_client.post(
        reverse("admin:detection_analysis_add"),
        {**data, "anomaly_prompts": "  \n ", "threshold": "1.5", "status": Status.RUNNING},
    )
    errors = blank.context["adminform"].form.errors
    assert {"anomaly_prompts", "threshold"} <= set(errors)
    assert Analysis.objects.count() == 1


# --- adding an analysis from its camera --------------------------------------------------


def test_it_links_the_camera_page_to_an_analysis_add_form_with_the_camera_chosen(admin_client):
    camera = CameraFactory(name="Loading bay")
    CameraFactory(name="Other")
    url = reverse("admin:cameras_camera_change", args=[camera.pk])
    page = parse(admin_client.get(url).content.decode())
    [link] = [a for a in page.find_all("a", class_="addlink") if a.text == "Add analysis"]
    assert link["href"] == f"{reverse('admin:detection_analysis_add')}?camera={camera.pk}"

    add = admin_client.get(link["href"])
    assert add.status_code == 200
    form = add.context["adminform"].form
    assert str(form.initial["camera"]) == str(camera.pk)
    add_page = parse(add.content.decode())
    selected = add_page.one("select", name="camera").find_all("option", selected=True)
    assert [(o["value"], o.text) for o in selected] == [(str(camera.pk), "Loading bay")]
    # "Start now" is offered, ticked; the status is not a field of the add form.
    assert form.fields["start_now"].initial is True
    assert "status" not in form.fields
    add_page.one("input", name="start_now", type="checkbox", checked=True)


def test_it_has_no_add_link_before_the_camera_is_saved(admin_client):
    page = admin_client.get(CAMERA_ADD).content.decode()
    assert "Add analysis" not in page
    assert "Save the camera first" in page


def test_it_queues_a_new_analysis_saved_with_the_default_choice_for_a_worker(
    admin_client, django_capture_on_commit_callbacks
):
    from detection.worker import leases

    camera = CameraFactory()
    add = reverse("admin:detection_analysis_add")
    # What the add form starts with: "Start now" ticked.
    initial = admin_client.get(f"{add}?camera={camera.pk}").context["adminform"].form
    assert initial["start_now"].value() is True
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(add, analysis_form(camera))
    assert response.status_code == 302
    analysis = Analysis.objects.get()
    assert analysis.status == Status.QUEUED
    assert callbacks  # the live pages are told, after commit
    assert "Queued: a worker will pick it up." in texts(response)

    claimed = leases.claim("worker-1", limit=5, include_live=True)
    assert [a.pk for a in claimed] == [analysis.pk]
    analysis.refresh_from_db()
    assert (analysis.status, analysis.lease_owner) == (Status.RUNNING, "worker-1")


def test_it_leaves_a_new_analysis_a_draft_when_start_now_is_unticked(admin_client):
    from detection.worker import leases

    camera = CameraFactory()
    response = admin_client.post(
        reverse("admin:detection_analysis_add"), analysis_form(camera, start_now=None)
    )
    assert response.status_code == 302
    analysis = Analysis.objects.get()
    assert analysis.status == Status.DRAFT
    assert any(t.startswith("Saved as a draft") for t in texts(response))
    assert leases.claim("worker-1", limit=5, include_live=True) == []
    # Queued later from the list, as before.
    run_action(admin_client, ANALYSIS_CHANGELIST, "queue", [analysis])
    analysis.refresh_from_db()
    assert analysis.status == Status.QUEUED


def test_it_starts_the_camera_add_form_as_a_webcam_on_device_0(admin_client):
    form = admin_client.get(CAMERA_ADD).context["adminform"].form
    assert (form["kind"].value(), form["source"].value()) == (Camera.Kind.WEBCAM, "0")
    # Saved as it comes, with a name only, it is that webcam.
    data = camera_form(kind=Camera.Kind.WEBCAM, source="0", name="Desk")
    assert admin_client.post(CAMERA_ADD, data).status_code == 302
    assert Camera.objects.get(name="Desk").kind == Camera.Kind.WEBCAM
    # A link may still ask for another kind.
    stream = admin_client.get(f"{CAMERA_ADD}?kind=stream").context["adminform"].form
    assert stream["kind"].value() == Camera.Kind.STREAM


def test_it_sets_a_webhook_through_the_analysis_change_form(admin_client, settings):
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = [ip_network("10.0.0.0/8")]
    analysis = AnalysisFactory()
    url = reverse("admin:detection_analysis_change", args=[analysis.pk])
    page = admin_client.get(url)
    assert 'name="webhook_url"' in page.content.decode()
    data = form_data(page)

    for target, reason in [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://192.168.1.5/hook", "a private address"),
        ("ftp://10.0.0.7/hook", "must use http or https"),
    ]:
        refused = admin_client.post(url, {**data, "webhook_url": target})
        assert refused.status_code == 200, target
        errors = refused.context["adminform"].form.errors
        assert list(errors) == ["webhook_url"]
        assert reason in " ".join(errors["webhook_url"])
    analysis.refresh_from_db()
    assert analysis.webhook_url == ""

    response = admin_client.post(url, {**data, "webhook_url": "http://10.0.0.7:9000/hook"})
    assert response.status_code == 302
    analysis.refresh_from_db()
    assert analysis.webhook_url == "http://10.0.0.7:9000/hook"


def test_it_queues_what_can_be_queued_and_skips_the_rest(admin_client):
    queueable = [
        AnalysisFactory(status=Status.DRAFT),
        AnalysisFactory(status=Status.STOPPED),
        AnalysisFactory(status=Status.FAILED, error_message="decoder died"),
        AnalysisFactory(status=Status.COMPLETED),
    ]
    running = AnalysisFactory(status=Status.RUNNING, lease_owner="worker-1")
    queued = AnalysisFactory(status=Status.QUEUED)
    untouched = AnalysisFactory(status=Status.DRAFT)

    response = run_action(admin_client, ANALYSIS_CHANGELIST, "queue", [*queueable, running, queued])
    assert response.status_code == 302
    for analysis in queueable:
        analysis.refresh_from_db()
        assert analysis.status == Status.QUEUED
        assert analysis.error_message == ""
    running.refresh_from_db()
    assert (running.status, running.lease_owner) == (Status.RUNNING, "worker-1")
    untouched.refresh_from_db()
    assert untouched.status == Status.DRAFT
    assert texts(response) == [
        "Queued 4 analyses.",
        "Skipped 2 analyses already queued or running.",
    ]


def test_it_stops_queued_and_running_analyses_and_clears_their_lease(admin_client):
    soon = timezone.now() + timedelta(seconds=30)
    running = AnalysisFactory(
        status=Status.RUNNING,
        lease_owner="host:42",
        lease_heartbeat_at=timezone.now(),
        lease_expires_at=soon,
        frames_scored=12,
    )
    queued = AnalysisFactory(status=Status.QUEUED)
    draft = AnalysisFactory(status=Status.DRAFT)

    response = run_action(admin_client, ANALYSIS_CHANGELIST, "stop", [running, queued, draft])
    assert response.status_code == 302
    running.refresh_from_db()
    queued.refresh_from_db()
    draft.refresh_from_db()
    assert (running.status, queued.status, draft.status) == ("stopped", "stopped", "draft")
    assert running.lease_owner == ""
    assert running.lease_heartbeat_at is None and running.lease_expires_at is None
    assert running.frames_scored == 12  # stopping keeps what was scored
    assert texts(response) == [
        "Stopped 2 analyses.",
        "Skipped 1 analysis that was neither queued nor running.",
    ]


def scored(status: str = Status.COMPLETED, n_scores: int = 3, n_incidents: int = 1) -> Analysis:
    analysis = AnalysisFactory(
        status=status,
        progress=1.0,
        frames_scored=n_scores,
        last_frame_index=20,
        last_score=0.4,
        peak_score=0.9,
        peak_time_s=1.0,
        average_score=0.35,
        metadata={"total_frames": 30},
        error_message="old",
        started_at=timezone.now(),
        finished_at=timezone.now(),
        lease_owner="w",
        lease_expires_at=timezone.now(),
    )
    FrameScoreFactory.create_batch(n_scores, analysis=analysis)
    IncidentFactory.create_batch(n_incidents, analysis=analysis)
    return analysis


def test_it_asks_for_confirmation_before_a_rerun(admin_client):
    first, second = scored(n_scores=3, n_incidents=1), scored(n_scores=4, n_incidents=2)
    response = run_action(admin_client, ANALYSIS_CHANGELIST, "rerun", [first, second])

    assert response.status_code == 200
    assert "admin/detection/analysis/rerun_confirmation.html" in [
        t.name for t in response.templates
    ]
    content = response.content.decode()
    assert "Stored scores to delete: 7" in content
    assert "Incidents to delete: 3" in content
    assert first.name in content and second.name in content
    assert 'name="post" value="yes"' in content
    assert 'name="action" value="rerun"' in content
    assert FrameScore.objects.count() == 7
    assert Incident.objects.count() == 3
    first.refresh_from_db()
    assert (first.status, first.frames_scored) == (Status.COMPLETED, 3)


def test_it_reruns_only_the_selected_analyses_after_confirmation(
    admin_client, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path
    first, second, other = scored(), scored(status=Status.FAILED), scored()
    # The upload's own record survives; what described the old run does not.
    Analysis.objects.filter(pk=second.pk).update(
        metadata={"uploaded_filename": "gate.mp4", "uploaded_bytes": 1234, "decoded_frames": 9}
    )
    incident = first.incidents.get()
    incident.thumbnail.save("peak.jpg", ContentFile(b"jpeg"))
    thumbnail = Path(incident.thumbnail.path)
    assert thumbnail.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(
            admin_client, ANALYSIS_CHANGELIST, "rerun", [first, second], post="yes"
        )
    assert response.status_code == 302
    assert texts(response) == ["Re-queued 2 analyses; deleted 6 scores and 2 incidents."]

    assert not FrameScore.objects.filter(analysis__in=[first, second]).exists()
    assert not Incident.objects.filter(analysis__in=[first, second]).exists()
    assert not thumbnail.exists()
    for analysis in (first, second):
        analysis.refresh_from_db()
        assert analysis.status == Status.QUEUED
        assert analysis.frames_scored == 0
        assert analysis.progress == 0
        assert analysis.error_message == ""
        assert analysis.lease_owner == ""
        assert None is analysis.last_frame_index is analysis.last_score is analysis.peak_score
        assert None is analysis.peak_time_s is analysis.average_score is analysis.started_at
        assert None is analysis.finished_at is analysis.lease_expires_at

    assert first.metadata == {}
    assert second.metadata == {"uploaded_filename": "gate.mp4", "uploaded_bytes": 1234}

    other.refresh_from_db()
    assert (other.status, other.frames_scored, other.peak_score) == (Status.COMPLETED, 3, 0.9)
    assert other.scores.count() == 3
    assert other.incidents.count() == 1


# --- incidents -------------------------------------------------------------------------


def test_it_acknowledges_only_unacknowledged_incidents(admin_client, admin_user):
    colleague = UserFactory(username="colleague")
    earlier = timezone.now() - timedelta(hours=2)
    done = IncidentFactory(acknowledged_by=colleague, acknowledged_at=earlier)
    pending = IncidentFactory()

    before = timezone.now()
    response = run_action(admin_client, INCIDENT_CHANGELIST, "acknowledge", [done, pending])
    assert response.status_code == 302
    pending.refresh_from_db()
    done.refresh_from_db()
    assert pending.acknowledged_by == admin_user
    assert pending.acknowledged_at >= before
    assert (done.acknowledged_by, done.acknowledged_at) == (colleague, earlier)
    assert texts(response) == [
        "Acknowledged 1 incident.",
        "Skipped 1 incident already acknowledged.",
    ]


def test_it_filters_incidents_by_acknowledgement_and_camera(admin_client, admin_user):
    acked = IncidentFactory(acknowledged_by=admin_user, acknowledged_at=timezone.now())
    open_one = IncidentFactory(end_time_s=None)

    def ids(**params: str) -> list[int]:
        response = admin_client.get(INCIDENT_CHANGELIST, params)
        return [i.pk for i in response.context["cl"].result_list]

    assert ids(acknowledged="yes") == [acked.pk]
    assert ids(acknowledged="no") == [open_one.pk]
    camera = open_one.analysis.camera
    assert ids(analysis__camera__id__exact=str(camera.pk)) == [open_one.pk]


def test_it_lets_only_the_note_of_an_incident_change(admin_client):
    incident = IncidentFactory(peak_score=0.91)
    url = reverse("admin:detection_incident_change", args=[incident.pk])
    response = admin_client.post(
        url, {"note": "False alarm: a reflection.", "peak_score": "0.1", "start_time_s": "0"}
    )
    assert response.status_code == 302
    incident.refresh_from_db()
    assert incident.note == "False alarm: a reflection."
    assert (incident.peak_score, incident.start_time_s) == (0.91, 10.0)


def test_it_previews_the_thumbnail_of_an_incident(admin_client, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    incident = IncidentFactory()
    url = reverse("admin:detection_incident_change", args=[incident.pk])
    assert "<img" not in admin_client.get(url).content.decode()

    incident.thumbnail.save("peak.jpg", ContentFile(b"jpeg"))
    content = admin_client.get(url).content.decode()
    # Through the access-checked view: MEDIA_URL is not served (test_incident_thumbnails.py).
    assert f'<img src="{incident.thumbnail_url}"' in content

    # A hostile stored name cannot break out of the attribute.
    Incident.objects.filter(pk=incident.pk).update(thumbnail='x"><script>alert(1)</script>.jpg')
    content = admin_client.get(url).content.decode()
    assert "<script>alert(1)" not in content
    assert '"><script>' not in content


def form_data(response) -> dict[str, object]:
    """What a browser would post back from an admin change page, unchanged."""
    data: dict[str, object] = {}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        forms += [formset.management_form, *formset.forms]
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            key = form.add_prefix(name)
            if isinstance(value, bool):
                if value:
                    data[key] = "on"
            elif isinstance(value, list | tuple):
                data[key] = [str(v.pk if hasattr(v, "pk") else v) for v in value]
            elif value is not None:
                data[key] = value
    return data


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["camera", "analysis", "incident"])
def test_it_does_not_write_back_what_the_worker_committed_meanwhile(
    admin_client, monkeypatch, model
):
    # The worker commits between the admin's read of the row and its write (PostgreSQL's
    # read committed allows it); saving the operator's edit must not undo that commit.
    camera = CameraFactory(status=Camera.Status.ONLINE)
    analysis = AnalysisFactory(camera=camera, status=Status.RUNNING, frames_scored=10)
    incident = IncidentFactory(analysis=analysis, peak_score=0.7)
    target, edit, worker_commit, committed = {
        "camera": (
            camera,
            {"name": "Gate (north)"},
            lambda: Camera.objects.filter(pk=camera.pk).update(status="offline", reconnect_count=3),
            lambda c: (c.status, c.reconnect_count) == ("offline", 3),
        ),
        "analysis": (
            analysis,
            {"threshold": "0.75"},
            lambda: Analysis.objects.filter(pk=analysis.pk).update(
                status=Status.COMPLETED, frames_scored=80, lease_owner=""
            ),
            lambda a: (a.status, a.frames_scored) == (Status.COMPLETED, 80),
        ),
        "incident": (
            incident,
            {"note": "checked on site"},
            lambda: Incident.objects.filter(pk=incident.pk).update(peak_score=0.95, end_time_s=42),
            lambda i: (i.peak_score, i.end_time_s) == (0.95, 42),
        ),
    }[model]
    opts = target._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[target.pk])
    data = {**form_data(admin_client.get(url)), **edit}

    model_admin = admin.site._registry[type(target)]
    original = type(model_admin).save_form

    def save_form_after_a_worker_commit(self, request, form, change):
        worker_commit()
        return original(self, request, form, change)

    monkeypatch.setattr(type(model_admin), "save_form", save_form_after_a_worker_commit)
    response = admin_client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    target.refresh_from_db()
    field, value = next(iter(edit.items()))
    assert str(getattr(target, field)) == value  # the operator's edit
    assert committed(target)  # the worker's commit, kept
