"""/upload/: real clips are stored under generated names and queued; junk leaves nothing."""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.test import Client
from django.urls import reverse

from cameras.models import Camera
from detection.engine.video import VIDEO_EXTENSIONS
from detection.models import Analysis
from tests.support.html import parse

URL = "/upload/"
MIB = 1024 * 1024
UUID_NAME = re.compile(r"^[0-9a-f]{32}\.(mp4|m4v|mov|avi|mkv|webm)$")
FORM = {
    "name": "Loading dock, Tuesday",
    "normal_prompts": "an empty loading dock\n\n  a parked truck  \n",
    "anomaly_prompts": "a fire\na person lying on the ground",
    "sampling_fps": "2.5",
    "threshold": "0.7",
}


@pytest.fixture
def dirs(settings, tmp_path: Path) -> dict[str, Path]:
    """MEDIA_ROOT, an allowed video dir and the upload temp dir, all empty, under tmp_path."""
    paths = {name: tmp_path / name for name in ("media", "videos", "upload-tmp")}
    for path in paths.values():
        path.mkdir()
    settings.MEDIA_ROOT = paths["media"]
    settings.DETECTION_VIDEO_DIRS = [paths["videos"]]
    settings.FILE_UPLOAD_TEMP_DIR = str(paths["upload-tmp"])
    # Every test upload goes through a temporary file on disk, as big videos do.
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    return paths


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def assert_nothing_left(dirs: dict[str, Path]) -> None:
    assert Camera.objects.count() == 0
    assert Analysis.objects.count() == 0
    assert files_under(dirs["media"]) == []
    assert files_under(dirs["upload-tmp"]) == []


def upload(client: Client, filename: str, content: bytes, **fields: str):
    data = {**FORM, **fields}
    return client.post(URL, {"video": SimpleUploadedFile(filename, content), **data})


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body written by hand: the test client would strip directories itself."""
    boundary = "----clipwatch-test-boundary"
    out = io.BytesIO()
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="{filename}"'
        f"\r\nContent-Type: video/mp4\r\n\r\n".encode()
    )
    out.write(content + b"\r\n")
    for key, value in fields.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def video_errors(response) -> list[str]:
    return response.context["form"].errors.get("video", [])


# --- success ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("ext", [e.lstrip(".") for e in VIDEO_EXTENSIONS])
def test_it_stores_a_real_clip_and_queues_an_analysis(logged_in, viewer, dirs, make_video, ext):
    clip = make_video(f"clip.{ext}", frames=20)

    response = upload(logged_in, f"clip.{ext}", clip.read_bytes())

    analysis = Analysis.objects.get()
    assert response.status_code == 302
    assert response["Location"] == analysis.get_absolute_url()
    assert analysis.get_absolute_url() == reverse("detection:analysis", args=[analysis.pk])

    stored = files_under(dirs["media"])
    assert len(stored) == 1
    path = stored[0]
    assert path.parent == dirs["media"].resolve() / "uploads"
    assert UUID_NAME.match(path.name) and path.suffix == f".{ext}"
    assert path.read_bytes() == clip.read_bytes()
    assert files_under(dirs["upload-tmp"]) == []  # the temporary upload was moved, not copied

    camera = analysis.camera
    assert camera.kind == Camera.Kind.FILE
    assert camera.source == str(path)
    assert camera.name == analysis.name == "Loading dock, Tuesday"
    assert camera.created_by == viewer
    assert list(camera.viewers.all()) == [viewer]
    camera.full_clean()  # still valid: MEDIA_ROOT is an allowed directory

    assert analysis.status == Analysis.Status.QUEUED
    assert analysis.created_by == viewer
    assert analysis.normal_prompts == "an empty loading dock\na parked truck"
    assert analysis.anomaly_prompts == "a fire\na person lying on the ground"
    assert analysis.sampling_fps == 2.5
    assert analysis.threshold == 0.7
    assert analysis.metadata["uploaded_filename"] == f"clip.{ext}"

    # The uploader can open the page the upload redirected to.
    assert logged_in.get(response["Location"]).status_code == 200


@pytest.mark.django_db
def test_it_lower_cases_the_extension_and_names_the_analysis_after_the_file(
    logged_in, dirs, make_video
):
    clip = make_video("clip.mp4")

    response = upload(logged_in, "Front Door.MP4", clip.read_bytes(), name="")

    assert response.status_code == 302
    analysis = Analysis.objects.get()
    assert analysis.name == analysis.camera.name == "Front Door"
    assert Path(analysis.camera.source).suffix == ".mp4"


@pytest.mark.django_db
def test_it_defaults_sampling_and_threshold_on_the_empty_form(logged_in, dirs):
    response = logged_in.get(URL)

    assert response.status_code == 200
    content = response.content.decode()
    assert 'enctype="multipart/form-data"' in content
    assert 'name="csrfmiddlewaretoken"' in content
    form = response.context["form"]
    assert form["sampling_fps"].value() == 1.0
    assert form["threshold"].value() == 0.6


@pytest.mark.django_db
def test_it_queues_an_analysis_that_learns_the_cameras_normal(logged_in, dirs, make_video):
    clip = make_video("clip.mp4")
    response = upload(
        logged_in,
        "clip.mp4",
        clip.read_bytes(),
        mode="combined",
        learning_seconds="30",
        auto_threshold="on",
    )
    assert response.status_code == 302, response.context["form"].errors
    analysis = Analysis.objects.get()
    assert (analysis.mode, analysis.learning_seconds, analysis.auto_threshold) == (
        "combined",
        30.0,
        True,
    )
    # Left out, the settings are the prototype's: prompts only, nothing learned.
    upload(logged_in, "clip.mp4", clip.read_bytes(), name="Second")
    second = Analysis.objects.get(name="Second")
    assert (second.mode, second.learning_seconds, second.auto_threshold) == ("prompts", 0, False)


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["normality", "combined"])
def test_it_asks_for_a_learning_period_in_normality_modes_and_stores_nothing(
    logged_in, dirs, make_video, mode
):
    clip = make_video("clip.mp4")
    response = upload(logged_in, "clip.mp4", clip.read_bytes(), mode=mode, learning_seconds="0")
    assert response.status_code == 200
    assert response.context["form"].errors["learning_seconds"] == [
        f"The {mode} mode compares frames with what the camera learned as normal: give a "
        "learning period above 0 seconds."
    ]
    assert_nothing_left(dirs)
    # The page offers the three settings with their help.
    page = parse(response.content.decode())
    assert page.one("select", name="mode").one("option", value=mode).get("selected") is not None
    assert page.one("input", name="learning_seconds")["value"] == "0"
    assert page.one("input", name="auto_threshold", type="checkbox")
    assert "Learn the first seconds as this camera's normal" in page.text


@pytest.mark.django_db
@pytest.mark.parametrize("filename", ["../../x.mp4", "..\\..\\x.mp4", "/etc/cron.d/x.mp4"])
def test_it_ignores_directories_in_the_uploaded_filename(
    logged_in, dirs, make_video, tmp_path, filename
):
    clip = make_video("clip.mp4")
    body, content_type = multipart(FORM, filename, clip.read_bytes())

    response = logged_in.post(URL, body, content_type=content_type)

    assert response.status_code == 302, response.context["form"].errors
    stored = files_under(dirs["media"])
    assert len(stored) == 1
    assert stored[0].parent == dirs["media"].resolve() / "uploads"
    assert UUID_NAME.match(stored[0].name)
    assert Camera.objects.get().source == str(stored[0])
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path.parent / "x.mp4").exists()


# --- refused content --------------------------------------------------------------------


def _jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((64, 64, 3), 127, np.uint8))
    assert ok
    return data.tobytes()


def _without_moov(clip: Path) -> bytes:
    data = clip.read_bytes()
    moov = data.find(b"moov")
    assert moov > data.find(b"mdat") > 0  # OpenCV writes the index last
    return data[: moov - 4]  # as if the upload (or the recording) stopped early


def _frames_zeroed(clip: Path) -> bytes:
    # The index survives, so the container opens; the frames are gone, so none decodes.
    data = bytearray(clip.read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    data[mdat + 4 : moov - 4] = bytes(moov - 4 - mdat - 4)
    return bytes(data)


UNOPENABLE = "cannot be opened as a video (corrupt, truncated, or not a video)"
NOT_A_CONTAINER = "not an MP4/MOV, AVI or Matroska/WebM file"  # from the content check
JUNK = {
    "empty": ("empty.mp4", lambda clip: b"", "The submitted file is empty."),
    "random": (
        "random.mp4",
        lambda clip: np.random.default_rng(0).bytes(64 * 1024),
        NOT_A_CONTAINER,
    ),
    "jpeg": ("holiday.mp4", lambda clip: _jpeg(), "this is a JPEG image, not a video"),
    "no-moov": ("cut.mp4", _without_moov, UNOPENABLE),
    "no-frames": (
        "blank.mp4",
        _frames_zeroed,
        "no frame could be decoded (corrupt, truncated, or an unsupported codec FMP4)",
    ),
    "text": (
        "notes.txt",
        lambda clip: b"just some notes\n",
        "unsupported extension '.txt'; expected one of .mp4, .m4v, .mov, .avi, .mkv, .webm",
    ),
    "playlist": (
        "stream.mp4",
        lambda clip: b"#EXTM3U\n#EXTINF:10,\nhttp://example.com/a.ts\n",
        "this is a playlist or manifest, not a video file",
    ),
    "sdp": (
        "camera.mp4",
        lambda clip: (
            b"v=0\no=- 0 0 IN IP4 127.0.0.1\nc=IN IP4 127.0.0.1\nm=video 5004 RTP/AVP 96\n"
        ),
        "this is a playlist or manifest, not a video file",
    ),
}


def _fast_start(clip: Path) -> bytes:
    """The clip with its index (`moov`) moved before the frames, as `-movflags faststart` does.

    Such a file opens and decodes from its first bytes, so a cut-off copy still plays its
    first seconds: decoding alone cannot tell it is truncated.
    """
    data = clip.read_bytes()
    mdat, moov = data.find(b"mdat") - 4, data.find(b"moov") - 4
    assert 0 < mdat < moov  # OpenCV writes the index last
    index = bytearray(data[moov:])
    shift = len(index)
    # Chunk offsets (stco: 32-bit, from the start of the file) move by the index's size.
    at = index.find(b"stco")
    assert at > 0 and index.find(b"co64") < 0
    count = int.from_bytes(index[at + 8 : at + 12], "big")
    for i in range(count):
        entry = at + 12 + 4 * i
        offset = int.from_bytes(index[entry : entry + 4], "big")
        index[entry : entry + 4] = (offset + shift).to_bytes(4, "big")
    return data[:mdat] + bytes(index) + data[mdat:moov]


TRUNCATED = {
    # The audit's case: the first part of a fast-start MP4 (it opened, 3 frames were scored).
    "fast-start mp4": ("clip.mp4", lambda clip: _fast_start(clip)[: len(_fast_start(clip)) // 3]),
    "avi": ("clip.avi", lambda clip: clip.read_bytes()[: clip.stat().st_size * 2 // 3]),
    "mkv": ("clip.mkv", lambda clip: clip.read_bytes()[: clip.stat().st_size * 2 // 3]),
}


def test_it_makes_a_fast_start_clip_that_decodes_whole_and_in_part(make_video, tmp_path):
    """The fixture above is what it claims: whole, every frame decodes; cut, the first do."""
    clip = make_video("clip.mp4", frames=40)
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    whole.write_bytes(_fast_start(clip))
    cut.write_bytes(TRUNCATED["fast-start mp4"][1](clip))
    decoded = {}
    for path in (whole, cut):
        capture = cv2.VideoCapture(str(path))
        decoded[path] = 0
        while capture.read()[0]:
            decoded[path] += 1
        capture.release()
    assert decoded[whole] == 40
    assert 0 < decoded[cut] < 40


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(TRUNCATED))
def test_it_refuses_a_truncated_upload_that_still_decodes_and_keeps_nothing(
    logged_in, dirs, make_video, case
):
    name, cut = TRUNCATED[case]
    data = cut(make_video(name, frames=40))

    response = upload(logged_in, name, data)

    assert response.status_code == 200
    [error] = video_errors(response)
    assert error.startswith(f"the file is truncated: it ends at byte {len(data):,} but"), error
    assert_nothing_left(dirs)


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(JUNK))
def test_it_refuses_junk_with_the_reason_and_keeps_nothing(logged_in, dirs, make_video, case):
    filename, content, reason = JUNK[case]
    data = content(make_video("clip.mp4"))

    response = upload(logged_in, filename, data)

    assert response.status_code == 200
    assert video_errors(response) == [reason]
    page = response.content.decode()
    assert "The video was not uploaded:" in page and "video</a>: " in page  # summary, by field
    assert reason.replace("'", "&#x27;") in page
    assert_nothing_left(dirs)


# --- size cap ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_one_byte_over_the_cap_and_keeps_nothing(logged_in, dirs, settings):
    settings.DETECTION_MAX_UPLOAD_MB = 1

    response = upload(logged_in, "big.mp4", b"\0" * (MIB + 1))

    assert video_errors(response) == [
        "the file is larger than the upload limit of 1 MB (DETECTION_MAX_UPLOAD_MB)"
    ]
    # The fields after the file still parsed: only the video is in error.
    assert list(response.context["form"].errors) == ["video"]
    assert_nothing_left(dirs)


@pytest.mark.django_db
def test_it_accepts_exactly_the_cap(logged_in, dirs, settings):
    settings.DETECTION_MAX_UPLOAD_MB = 1

    response = upload(logged_in, "big.mp4", np.random.default_rng(1).bytes(MIB))

    # Not refused for its size; refused for its content (random bytes).
    assert video_errors(response) == [NOT_A_CONTAINER]
    assert_nothing_left(dirs)


@pytest.mark.django_db
def test_it_stops_writing_an_oversized_upload_at_the_cap(logged_in, dirs, settings, monkeypatch):
    settings.DETECTION_MAX_UPLOAD_MB = 1
    written: list[int] = []
    original = TemporaryFileUploadHandler.receive_data_chunk

    def spy(self, raw_data, start):
        written.append(len(raw_data))
        return original(self, raw_data, start)

    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk", spy)

    response = upload(logged_in, "huge.mp4", b"\0" * (5 * MIB))

    assert video_errors(response)[0].startswith("the file is larger than the upload limit")
    assert 0 < sum(written) <= MIB  # the other 4 MiB never reached the disk
    assert_nothing_left(dirs)


# --- field errors -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("normal_prompts", "  \n \n", "Write at least one prompt (one per line)."),
        ("anomaly_prompts", "", "Write at least one prompt (one per line)."),
        ("threshold", "1.5", "Must lie strictly between 0 and 1 (got 1.5)."),
        ("threshold", "0", "Must lie strictly between 0 and 1 (got 0.0)."),
        ("sampling_fps", "0", "The sampling rate must be above 0 frames/s."),
        ("sampling_fps", "500", "At most 120 frames/s."),
        ("sampling_fps", "fast", "Enter a number."),
    ],
)
def test_it_reports_bad_fields_and_stores_nothing(
    logged_in, dirs, make_video, field, value, message
):
    clip = make_video("clip.mp4")

    response = upload(logged_in, "clip.mp4", clip.read_bytes(), **{field: value})

    assert response.status_code == 200
    assert response.context["form"].errors == {field: [message]}
    assert_nothing_left(dirs)


@pytest.mark.django_db
def test_it_requires_a_video(logged_in, dirs):
    response = logged_in.post(URL, FORM)

    assert response.context["form"].errors == {"video": ["This field is required."]}
    assert_nothing_left(dirs)


# --- failures after the file was stored -----------------------------------------------------


@pytest.mark.django_db
def test_it_deletes_the_file_when_saving_the_analysis_fails(
    logged_in, dirs, make_video, monkeypatch
):
    def broken_save(self, *args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Analysis, "save", broken_save)
    clip = make_video("clip.mp4")

    with pytest.raises(RuntimeError, match="database went away"):
        upload(logged_in, "clip.mp4", clip.read_bytes())

    assert_nothing_left(dirs)  # the camera was rolled back, the file deleted


# --- who may upload -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_it_sends_anonymous_users_to_the_login_page(client, dirs, make_video, method):
    clip = make_video("clip.mp4")
    data = {"video": SimpleUploadedFile("clip.mp4", clip.read_bytes()), **FORM}

    response = getattr(client, method)(URL, data if method == "post" else None)

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={URL}"
    assert_nothing_left(dirs)


@pytest.mark.django_db
def test_it_checks_the_csrf_token_after_installing_its_upload_handler(
    viewer, dirs, make_video, monkeypatch
):
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    clip = make_video("clip.mp4").read_bytes()
    created: list[str] = []
    original = TemporaryUploadedFile.__init__

    def spy(self, name, *args, **kwargs):
        created.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(TemporaryUploadedFile, "__init__", spy)

    forged = client.post(URL, {"video": SimpleUploadedFile("clip.mp4", clip), **FORM})
    assert forged.status_code == 403
    assert_nothing_left(dirs)

    client.get(URL)
    token = client.cookies["csrftoken"].value
    response = client.post(
        URL,
        {"video": SimpleUploadedFile("clip.mp4", clip), "csrfmiddlewaretoken": token, **FORM},
    )
    assert response.status_code == 302
    assert Analysis.objects.count() == 1
    assert created  # the upload went through Django's temporary-file handler after ours
