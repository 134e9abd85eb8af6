"""Examples of a camera's normal: added on the analysis page (images or a clip), shown through
an access-checked view, removed; in the admin; kept across re-runs; and the upload form's
rule that normality needs something to learn from."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from detection import actions
from detection.models import Analysis, Exemplar, LearnedMemory
from detection.web import exemplars as views
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    IncidentFactory,
    UserFactory,
)
from tests.support.html import parse
from tests.support.media import scene, write_video
from tests.support.sessions import login

pytestmark = pytest.mark.django_db


def png(seed: int = 0, size: tuple[int, int] = (80, 60)) -> bytes:
    ok, data = cv2.imencode(".png", scene(size[1], size[0], seed=seed))
    assert ok
    return data.tobytes()


def decoded(exemplar: Exemplar) -> np.ndarray:
    data = exemplar.image.open("rb").read()
    assert data[:3] == b"\xff\xd8\xff", "not stored as a JPEG"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def add_url(analysis: Analysis) -> str:
    return reverse("detection:exemplar_add", args=[analysis.pk])


def stored_files(media: Path) -> list[Path]:
    return sorted(p for p in (media / "media").rglob("*") if p.is_file())


def make_exemplar(owner, kind: str = "normal", **fields) -> Exemplar:
    key = "camera" if owner.__class__.__name__ == "Camera" else "analysis"
    (made,) = actions.add_exemplars(
        [png(3)], kind=kind, source=fields.pop("source", "upload"), user=None, **{key: owner}
    )
    for name, value in fields.items():
        setattr(made, name, value)
    if fields:
        made.save()
    return made


# --- Adding ---------------------------------------------------------------------------------


def test_it_adds_images_as_normal_examples_of_the_camera(client, media, analysis, viewer):
    files = [SimpleUploadedFile("dock-1.png", png(1)), SimpleUploadedFile("dock-2.png", png(2))]
    response = login(client, viewer).post(
        add_url(analysis), {"kind": "normal", "scope": "camera", "images": files}
    )
    assert response.status_code == 302
    assert response["Location"] == f"{analysis.get_absolute_url()}#examples"
    assert texts(response) == [
        "Added 2 normal examples for this camera; a running analysis uses them within seconds."
    ]
    made = list(Exemplar.objects.order_by("pk"))
    assert len(made) == 2
    for exemplar in made:
        assert (exemplar.camera, exemplar.analysis) == (analysis.camera, None)
        assert (exemplar.kind, exemplar.source) == ("normal", "upload")
        assert exemplar.created_by == viewer
        assert exemplar.embedding is None and exemplar.model_spec == ""
        # Re-encoded under a generated name: nothing of the client's name is kept.
        assert exemplar.image.name.startswith("exemplars/") and "dock" not in exemplar.image.name
        assert decoded(exemplar).shape == (60, 80, 3)


def test_it_adds_an_anomaly_example_to_this_analysis_only(client, media, analysis, viewer):
    login(client, viewer).post(
        add_url(analysis),
        {"kind": "anomaly", "scope": "analysis", "images": SimpleUploadedFile("x.jpg", png(4))},
    )
    exemplar = Exemplar.objects.get()
    assert (exemplar.camera, exemplar.analysis, exemplar.kind) == (None, analysis, "anomaly")
    # A PNG named .jpg is fine: the content decides.
    assert decoded(exemplar).shape == (60, 80, 3)


def test_it_samples_a_clip_at_one_frame_per_second(client, media, analysis, viewer, tmp_path):
    # 5 s at 10 frames/s, written with cv2.VideoWriter: frames 0, 10, 20, 30 and 40.
    clip = write_video(tmp_path / "quiet.avi", frames=50, fps=10.0, size=(160, 120))
    response = login(client, viewer).post(
        add_url(analysis),
        {
            "kind": "normal",
            "scope": "camera",
            "clip": SimpleUploadedFile("quiet.avi", clip.read_bytes()),
        },
    )
    assert texts(response)[-1].startswith("Added 5 normal examples for this camera")
    made = Exemplar.objects.all()
    assert made.count() == 5
    assert {(e.source, e.kind) for e in made} == {("clip", "normal")}
    assert all(decoded(e).shape == (120, 160, 3) for e in made)


def test_it_keeps_at_most_120_frames_of_a_clip(client, media, analysis, viewer, tmp_path):
    clip = write_video(tmp_path / "long.avi", frames=130, fps=1.0, size=(64, 48))
    login(client, viewer).post(
        add_url(analysis),
        {
            "kind": "normal",
            "scope": "analysis",
            "clip": SimpleUploadedFile("long.avi", clip.read_bytes()),
        },
    )
    assert Exemplar.objects.filter(analysis=analysis).count() == views.MAX_CLIP_FRAMES == 120


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {
                "images": [
                    SimpleUploadedFile("fine.png", png()),
                    SimpleUploadedFile("notes.png", b"hello"),
                ]
            },
            "notes.png: not an image format that can be read",
        ),
        (
            {"clip": SimpleUploadedFile("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)},
            "broken.mp4: cannot be opened as a video (corrupt, truncated, or not a video)",
        ),
        (
            {"clip": SimpleUploadedFile("clip.txt", b"not a video")},
            "clip.txt: unsupported extension '.txt'; expected one of",
        ),
        (
            {"images": SimpleUploadedFile("empty.png", b"")},
            "empty.png: The submitted file is empty.",
        ),
        ({"clip": SimpleUploadedFile("empty.mp4", b"")}, "empty.mp4: The submitted file is empty."),
        (
            {"clip": SimpleUploadedFile("fake.mp4", png())},
            "fake.mp4: this is a PNG image, not a video",
        ),
        ({}, "Choose one or more images, or a clip."),
        (
            {
                "images": SimpleUploadedFile("a.png", png()),
                "clip": SimpleUploadedFile("b.mp4", b"x"),
            },
            "Give images or one clip, not both.",
        ),
    ],
)
def test_it_names_the_file_and_the_reason_of_a_bad_upload_and_keeps_nothing(
    client, media, analysis, viewer, fields, message
):
    response = login(client, viewer).post(
        add_url(analysis), {"kind": "normal", "scope": "camera", **fields}
    )
    assert response.status_code == 302
    (text,) = texts(response)
    assert text.startswith("Examples not added: ") and message in text, text
    assert "Traceback" not in text and "/" not in text.removeprefix("Examples not added: ")
    assert not Exemplar.objects.exists()
    assert stored_files(media) == []


def test_it_refuses_a_clip_over_the_upload_limit_while_it_streams_in(
    client, media, analysis, viewer, settings
):
    settings.DETECTION_MAX_UPLOAD_MB = 1
    big = SimpleUploadedFile("big.mp4", b"\x00" * (1024 * 1024 + 1))
    response = login(client, viewer).post(
        add_url(analysis), {"kind": "normal", "scope": "camera", "clip": big}
    )
    assert "the file is larger than the upload limit of 1 MB" in texts(response)[0]
    assert not Exemplar.objects.exists()


def test_it_lets_only_viewers_add_examples(client, media, analysis, viewer, stranger):
    data = {"kind": "normal", "scope": "camera", "images": SimpleUploadedFile("a.png", png())}
    assert login(client, stranger).post(add_url(analysis), data).status_code == 404
    assert login(client, viewer).get(add_url(analysis)).status_code == 405
    anonymous = Client().post(add_url(analysis), data)
    assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]
    assert not Exemplar.objects.exists()

    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(viewer)
    data["images"] = SimpleUploadedFile("a.png", png())
    assert csrf.post(add_url(analysis), data).status_code == 403
    assert not Exemplar.objects.exists() and stored_files(media) == []


# --- Showing ----------------------------------------------------------------------------------


def test_it_lists_the_examples_that_apply_with_thumbnails_through_the_checked_view(
    client, media, analysis, viewer
):
    own = make_exemplar(analysis, "anomaly")
    cameras = make_exemplar(analysis.camera, "normal")
    sibling = make_exemplar(AnalysisFactory(camera=analysis.camera))  # another analysis's own
    elsewhere = make_exemplar(CameraFactory(viewers=[viewer]))
    page = parse(login(client, viewer).get(analysis.get_absolute_url()).content.decode())
    section = page.one("section", id="examples")
    items = section.find_all("li", data_exemplar_id=True)
    assert sorted(int(li["data-exemplar-id"]) for li in items) == sorted([own.pk, cameras.pk])
    assert {sibling.pk, elsewhere.pk}.isdisjoint(int(li["data-exemplar-id"]) for li in items)
    for li in items:
        url = reverse("detection:exemplar_image", args=[li["data-exemplar-id"]])
        assert li.one("img")["src"] == url
    assert "1 normal · 1 anomaly" in section.text
    assert "/media/" not in page.raw_text and "exemplars/" not in page.raw_text
    # And a form to add more, with its CSRF token, multipart.
    form = section.one("form", action=add_url(analysis))
    assert form["enctype"] == "multipart/form-data"
    assert form.find_all("input", name="csrfmiddlewaretoken")
    assert form.one("input", name="images").get("multiple") is not None


def test_it_serves_an_example_image_only_to_those_who_may_see_the_camera(
    client, media, analysis, viewer, stranger
):
    for exemplar in (make_exemplar(analysis), make_exemplar(analysis.camera)):
        url = reverse("detection:exemplar_image", args=[exemplar.pk])
        assert url == f"/exemplars/{exemplar.pk}/image.jpg"
        response = login(client, viewer).get(url)
        assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
        assert b"".join(response.streaming_content) == exemplar.image.open("rb").read()
        assert login(client, stranger).get(url).status_code == 404
        anonymous = Client().get(url)
        assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]
        assert login(client, viewer).get(f"/media/{exemplar.image.name}").status_code == 404
    assert client.get(reverse("detection:exemplar_image", args=[999999])).status_code == 404


# --- Removing ---------------------------------------------------------------------------------


def test_it_removes_an_example_and_its_file(
    client, media, analysis, viewer, django_capture_on_commit_callbacks
):
    exemplar = make_exemplar(analysis.camera)
    name = exemplar.image.name
    url = reverse("detection:exemplar_delete", args=[exemplar.pk])
    assert url == f"/exemplars/{exemplar.pk}/delete/"
    page = parse(login(client, viewer).get(analysis.get_absolute_url()).content.decode())
    form = page.one("form", action=url)
    back = form.one("input", name="next")["value"]

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"next": back})
    assert response.status_code == 302 and response["Location"] == back
    assert texts(response) == ["Removed normal example."]
    assert not Exemplar.objects.exists()
    assert not default_storage.exists(name)


def test_it_lets_only_viewers_remove_examples(client, media, analysis, viewer, stranger):
    exemplar = make_exemplar(analysis)
    url = reverse("detection:exemplar_delete", args=[exemplar.pk])
    assert login(client, stranger).post(url).status_code == 404
    assert login(client, viewer).get(url).status_code == 405
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(viewer)
    assert csrf.post(url).status_code == 403
    assert Exemplar.objects.filter(pk=exemplar.pk).exists()
    # Elsewhere than this site is not a place to go back to.
    response = login(client, viewer).post(url, {"next": "https://evil.example/"})
    assert response["Location"] == f"{analysis.get_absolute_url()}#examples"
    assert not Exemplar.objects.exists()


def test_it_answers_a_fetch_removal_with_json(client, media, analysis, viewer):
    exemplar = make_exemplar(analysis)
    url = reverse("detection:exemplar_delete", args=[exemplar.pk])
    response = login(client, viewer).post(url, HTTP_ACCEPT="application/json")
    assert response.json() == {"ok": True, "deleted": 1}


# --- Re-runs ----------------------------------------------------------------------------------


def test_it_forgets_what_a_rerun_analysis_learned_but_keeps_its_examples(
    media, analysis, viewer, django_capture_on_commit_callbacks
):
    other = AnalysisFactory(camera=analysis.camera)
    LearnedMemory.objects.create(analysis=analysis, model_spec="m|w", frames=3, data=b"npz")
    LearnedMemory.objects.create(analysis=other, model_spec="m|w", frames=3, data=b"npz")
    incident = IncidentFactory(analysis=analysis)
    frame = default_storage.save(f"incidents/frames/{incident.pk}/7.jpg", ContentFile(png()))
    incident.frames = [frame]
    incident.save()
    actions.feedback(incident, "false_alarm", viewer)
    kept = [make_exemplar(analysis), make_exemplar(analysis.camera)]
    FrameScoreFactory(analysis=analysis)

    with django_capture_on_commit_callbacks(execute=True):
        result = actions.rerun(Analysis.objects.filter(pk=analysis.pk))

    assert result.incidents_deleted == 1
    assert not LearnedMemory.objects.filter(analysis=analysis).exists()
    assert LearnedMemory.objects.filter(analysis=other).exists()
    assert Exemplar.objects.count() == 3  # the feedback example included
    assert all(Exemplar.objects.filter(pk=e.pk).exists() for e in kept)
    assert not default_storage.exists(frame)  # the incident's own files went with it
    feedback = Exemplar.objects.get(source="feedback")
    assert feedback.incident is None and feedback.image.open("rb").read() == png()


# --- The admin --------------------------------------------------------------------------------


def test_it_lists_examples_in_the_admin_with_previews_through_the_checked_view(
    admin_client, media, analysis
):
    exemplar = make_exemplar(analysis.camera, "anomaly")
    changelist = reverse("admin:detection_exemplar_changelist")
    page = admin_client.get(changelist).content.decode()
    url = reverse("detection:exemplar_image", args=[exemplar.pk])
    assert f'src="{url}"' in page and "/media/" not in page
    assert admin_client.get(changelist, {"kind__exact": "normal"}).context["cl"].result_count == 0
    assert admin_client.get(changelist, {"source__exact": "upload"}).context["cl"].result_count == 1
    change = admin_client.get(reverse("admin:detection_exemplar_change", args=[exemplar.pk]))
    assert change.status_code == 200 and f'src="{url}"' in change.content.decode()
    assert f"/media/{exemplar.image.name}" not in change.content.decode()


def test_it_scopes_the_exemplar_admin_to_visible_cameras(client, media, analysis, viewer):
    staff = UserFactory(username="staff")
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(Permission.objects.get(codename="view_exemplar"))
    analysis.camera.viewers.add(staff)
    shown = [make_exemplar(analysis), make_exemplar(analysis.camera)]
    hidden = make_exemplar(AnalysisFactory())
    login(client, staff)
    response = client.get(reverse("admin:detection_exemplar_changelist"))
    assert sorted(e.pk for e in response.context["cl"].result_list) == sorted(e.pk for e in shown)
    hidden_url = reverse("admin:detection_exemplar_change", args=[hidden.pk])
    assert client.get(hidden_url).status_code == 302  # "does not exist": back to the index


def test_it_adds_and_deletes_an_example_in_the_admin(
    admin_client, admin_user, media, analysis, django_capture_on_commit_callbacks
):
    add = reverse("admin:detection_exemplar_add")
    response = admin_client.post(
        add,
        {
            "kind": "normal",
            "camera": analysis.camera.pk,
            "image": SimpleUploadedFile("a.png", png()),
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    exemplar = Exemplar.objects.get()
    assert (exemplar.created_by, exemplar.source) == (admin_user, "upload")
    assert exemplar.image.name.endswith(".jpg") and decoded(exemplar).shape == (60, 80, 3)

    both = admin_client.post(
        add,
        {
            "kind": "normal",
            "camera": analysis.camera.pk,
            "analysis": analysis.pk,
            "image": SimpleUploadedFile("a.png", png()),
        },
    )
    assert both.context["adminform"].form.errors == {
        "analysis": ["Choose a camera or one analysis, not both."]
    }
    bad = admin_client.post(
        add,
        {
            "kind": "normal",
            "camera": analysis.camera.pk,
            "image": SimpleUploadedFile("a.png", b"x"),
        },
    )
    assert "image" in bad.context["adminform"].form.errors
    assert Exemplar.objects.count() == 1

    name = exemplar.image.name
    delete = reverse("admin:detection_exemplar_delete", args=[exemplar.pk])
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(delete, {"post": "yes"})
    assert not Exemplar.objects.exists() and not default_storage.exists(name)


def analysis_form(camera, **overrides) -> dict[str, object]:
    return {
        "camera": camera.pk,
        "name": "Dock",
        "normal_prompts": "an empty dock",
        "anomaly_prompts": "a fire",
        "threshold": "0.6",
        "sampling_fps": "1",
        "window_size": "60",
        "smoothing_window": "1",
        "incident_open_frames": "3",
        "incident_close_frames": "5",
        "hysteresis": "0.05",
        "rescore_interval_s": "3",
        "mode": "normality",
        "learning_seconds": "0",
        "status": "draft",
        **overrides,
    }


def test_it_asks_the_admin_for_something_to_learn_in_normality_mode(admin_client, media):
    camera = CameraFactory()
    add = reverse("admin:detection_analysis_add")
    response = admin_client.post(add, analysis_form(camera))
    errors = response.context["adminform"].form.errors["learning_seconds"]
    assert errors == [
        "The normality mode compares frames with what the camera learned as normal: give a "
        "learning period above 0 seconds, or add normal examples of the camera first."
    ]
    assert admin_client.post(add, analysis_form(camera, learning_seconds="30")).status_code == 302
    # Normal examples of the camera are enough to start from.
    make_exemplar(camera)
    response = admin_client.post(add, analysis_form(camera, name="Dock 2", mode="combined"))
    assert response.status_code == 302
    assert Analysis.objects.filter(mode="combined", learning_seconds=0).count() == 1
    page = admin_client.get(
        reverse("admin:detection_analysis_change", args=[Analysis.objects.first().pk])
    )
    assert "Learning the normal" in page.content.decode()
