"""The Exemplar admin's add form: one image, or one short clip sampled as on the analysis page
(one example per frame at one frame per second), scoped to the cameras the user may see."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from detection.models import Exemplar
from tests.support.factories import CameraFactory, UserFactory
from tests.support.media import scene
from tests.support.sessions import login

pytestmark = pytest.mark.django_db

ADD = "admin:detection_exemplar_add"


def clip_bytes(tmp_path: Path, seconds: int = 3, fps: float = 10.0) -> bytes:
    """An MJPG .avi of moving scenes, written with cv2.VideoWriter."""
    path = tmp_path / "made.avi"
    size = (160, 120)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(int(seconds * fps)):
        writer.write(scene(size[1], size[0], seed=1, t=i / fps))
    writer.release()
    return path.read_bytes()


def png() -> bytes:
    ok, data = cv2.imencode(".png", scene(60, 80, seed=2))
    assert ok
    return data.tobytes()


def texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def errors(response) -> dict[str, list[str]]:
    return response.context["adminform"].form.errors


def stored_files(media: Path) -> list[Path]:
    return sorted(p for p in (media / "media").rglob("*") if p.is_file())


def test_it_adds_one_example_per_sampled_frame_of_a_clip(
    admin_client, admin_user, media, analysis, tmp_path
):
    # 3 s at 10 frames/s, sampled at one frame per second: 3 examples.
    clip = SimpleUploadedFile("dock-night.avi", clip_bytes(tmp_path))
    response = admin_client.post(
        reverse(ADD), {"kind": "anomaly", "analysis": analysis.pk, "clip": clip}
    )
    assert response.status_code == 302, errors(response)
    assert response["Location"] == reverse("admin:detection_exemplar_changelist")
    assert texts(response) == ["3 examples added from dock-night.avi"]
    made = Exemplar.objects.order_by("pk")
    assert made.count() == 3
    for exemplar in made:
        assert (exemplar.camera, exemplar.analysis) == (None, analysis)
        assert (exemplar.kind, exemplar.source) == ("anomaly", "clip")
        assert exemplar.created_by == admin_user
        assert exemplar.image.name.endswith(".jpg") and "dock" not in exemplar.image.name
    assert len(stored_files(media)) == 3
    assert LogEntry.objects.filter(object_id__in=[str(e.pk) for e in made]).count() == 3


def test_it_still_adds_one_image(admin_client, admin_user, media, analysis):
    response = admin_client.post(
        reverse(ADD),
        {
            "kind": "normal",
            "camera": analysis.camera.pk,
            "image": SimpleUploadedFile("a.png", png()),
        },
    )
    assert response.status_code == 302, errors(response)
    exemplar = Exemplar.objects.get()
    assert (exemplar.camera, exemplar.source, exemplar.created_by) == (
        analysis.camera,
        "upload",
        admin_user,
    )


@pytest.mark.parametrize(
    ("files", "field", "message"),
    [
        ({}, "image", "Choose an image, or a clip."),
        (
            {"image": "a.png", "clip": "b.avi"},
            "clip",
            "Give an image or a clip, not both.",
        ),
        (
            {"clip": "junk.avi"},
            "clip",
            "junk.avi: cannot be opened as a video (corrupt, truncated, or not a video)",
        ),
        (
            {"clip": "notes.txt"},
            "clip",
            "notes.txt: unsupported extension '.txt'; expected one of",
        ),
        ({"clip": "empty.avi"}, "clip", "empty.avi: The submitted file is empty."),
    ],
)
def test_it_asks_for_exactly_one_readable_image_or_clip(
    admin_client, media, analysis, tmp_path, files, field, message
):
    contents = {
        "a.png": png(),
        "b.avi": clip_bytes(tmp_path),
        "junk.avi": b"RIFF\x00\x00\x00\x00AVI junk, not a video" * 10,
        "notes.txt": b"not a video",
        "empty.avi": b"",
    }
    data = {key: SimpleUploadedFile(name, contents[name]) for key, name in files.items()}
    response = admin_client.post(
        reverse(ADD), {"kind": "normal", "camera": analysis.camera.pk, **data}
    )
    assert response.status_code == 200
    found = errors(response)
    assert list(found) == [field], found
    (text,) = found[field]
    assert text.startswith(message), text
    assert "/" not in text and "Traceback" not in text
    assert not Exemplar.objects.exists() and stored_files(media) == []


def test_it_refuses_a_clip_over_the_upload_limit_while_it_streams_in(
    admin_client, media, analysis, settings
):
    settings.DETECTION_MAX_UPLOAD_MB = 1
    big = SimpleUploadedFile("big.avi", b"\x00" * (1024 * 1024 + 1))
    response = admin_client.post(
        reverse(ADD), {"kind": "normal", "camera": analysis.camera.pk, "clip": big}
    )
    assert errors(response) == {
        "clip": ["the file is larger than the upload limit of 1 MB (DETECTION_MAX_UPLOAD_MB)"]
    }
    assert not Exemplar.objects.exists()


def test_it_still_checks_the_csrf_token_of_the_add_form(admin_user, media, analysis):
    client = login(Client(enforce_csrf_checks=True), admin_user)
    response = client.post(
        reverse(ADD),
        {
            "kind": "normal",
            "camera": analysis.camera.pk,
            "image": SimpleUploadedFile("a.png", png()),
        },
    )
    assert response.status_code == 403
    assert not Exemplar.objects.exists()


def test_it_adds_a_clip_only_to_cameras_the_staff_user_may_see(client, media, analysis, tmp_path):
    staff = UserFactory(username="staff", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_exemplar", "view_exemplar"])
    )
    analysis.camera.viewers.add(staff)
    hidden = CameraFactory()
    login(client, staff)
    refused = client.post(
        reverse(ADD),
        {"kind": "normal", "camera": hidden.pk, "clip": SimpleUploadedFile("c.avi", b"x")},
    )
    assert "camera" in errors(refused) and not Exemplar.objects.exists()
    response = client.post(
        reverse(ADD),
        {
            "kind": "normal",
            "camera": analysis.camera.pk,
            "clip": SimpleUploadedFile("c.avi", clip_bytes(tmp_path, seconds=2)),
        },
    )
    assert response.status_code == 302, errors(response)
    assert set(Exemplar.objects.values_list("camera", "source", "created_by")) == {
        (analysis.camera.pk, "clip", staff.pk)
    }
    assert Exemplar.objects.count() == 2
