"""Model validation: what `full_clean()` accepts and refuses, field by field."""

from __future__ import annotations

import os
from ipaddress import ip_network

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from cameras.models import Camera
from detection.models import Analysis, FrameScore
from tests.support.dns import resolve_as
from tests.support.factories import AnalysisFactory, FrameScoreFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def video_dir(tmp_path, settings, make_video):
    allowed = tmp_path / "videos"
    allowed.mkdir()
    make_video("clip.mp4", frames=2).rename(allowed / "clip.mp4")
    settings.DETECTION_VIDEO_DIRS = [allowed]
    settings.MEDIA_ROOT = tmp_path / "media"
    return allowed


def source_errors(kind: str, source: str) -> list[str]:
    camera = Camera(name="c", kind=kind, source=source)
    try:
        camera.full_clean()
    except ValidationError as exc:
        return exc.message_dict.get("source", [])
    return []


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://10.0.0.5:554/stream1",
        "rtsps://cam.example.com/live",
        "http://127.0.0.1:8080/mjpg",
        "https://user:secret@cam.example.com/video.mjpg",
    ],
)
def test_it_accepts_stream_urls_with_allowed_schemes(url):
    assert source_errors("stream", url) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://cam.example.com/x", "not 'ftp'"),
        ("file:///etc/passwd", "not 'file'"),
        ("javascript:alert(1)", "not 'javascript'"),
        ("/dev/video0", "not '(none)'"),
        ("rtsp://", "is not a valid stream URL"),
    ],
)
def test_it_refuses_other_stream_urls(url, reason):
    errors = source_errors("stream", url)
    assert len(errors) == 1 and reason in errors[0]


def test_it_accepts_webcam_indexes_and_refuses_negative_ones():
    assert source_errors("webcam", "0") == []
    assert source_errors("webcam", " 2 ") == []
    assert "cannot be negative" in source_errors("webcam", "-1")[0]
    assert "device index" in source_errors("webcam", "/dev/video0")[0]
    assert "above 63" in source_errors("webcam", "64")[0]


@pytest.mark.parametrize("source", ["\u00b2", "\u0661", "--1", "+1", "0x1", "1_0"])
def test_it_refuses_webcam_indexes_that_are_not_ascii_digits(source):
    # `isdigit()` accepts superscripts and other scripts' digits; `int()` then fails or
    # reads them: only 0-9 are a device index.
    errors = source_errors("webcam", source)
    assert len(errors) == 1 and "device index" in errors[0]


# --- outbound addresses (docs/security.md, "Outbound requests: the trust model") --------


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://nvr:554/stream1",
        "rtsp://cam_1.local/live",
        "rtsp://admin:secret@NVR.lan/ch1",
        "rtsp://192.168.1.20/h264",
        "rtsp://172.16.4.2:554/",
        "http://10.0.0.5:8080/mjpg",
        "http://[fd12:3456::5]:8080/mjpg",
        "rtsp://100.101.102.103/live",  # carrier-grade NAT, Tailscale
    ],
)
def test_it_accepts_lan_cameras_by_address_or_host_name(url):
    assert source_errors("stream", url) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "a cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/", "a cloud metadata address"),
        ("http://[::ffff:a9fe:a9fe]/", "a cloud metadata address"),
        ("http://100.100.100.200/latest/meta-data/", "a cloud metadata address"),
        ("rtsp://169.254.10.20/live", "a link-local address"),
        ("rtsp://[fe80::1]/live", "a link-local address"),
        ("http://0.0.0.0:8080/", "an unspecified address"),
        ("http://[::]:8080/", "an unspecified address"),
        ("rtsp://239.1.1.1/", "a multicast address"),
        ("http://2130706433/", "four decimal numbers"),  # 127.0.0.1 written as one number
        ("http://0x7f.1/", "four decimal numbers"),
        ("http://a@b@10.0.0.5/", "%40"),
    ],
)
def test_it_refuses_link_local_and_metadata_stream_cameras(url, reason):
    errors = source_errors("stream", url)
    assert len(errors) == 1 and reason in errors[0], errors


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/mjpg",
        "rtsp://[::1]:8554/live",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost:8080/",  # refused by what it resolves to
    ],
)
def test_it_refuses_loopback_cameras_unless_the_setting_allows_them(settings, url):
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = []
    errors = source_errors("stream", url)
    assert len(errors) == 1, errors
    assert "a loopback address" in errors[0]
    assert "DETECTION_CAMERA_ALLOWED_NETWORKS" in errors[0]
    settings.DETECTION_CAMERA_ALLOWED_NETWORKS = [ip_network("127.0.0.0/8"), ip_network("::1/128")]
    assert source_errors("stream", url) == []


def test_it_checks_every_address_a_camera_host_name_resolves_to(monkeypatch):
    resolve_as(
        monkeypatch,
        {"cam.example.net": ["192.168.1.20", "169.254.169.254"], "nvr": ["10.0.0.8"]},
    )
    errors = source_errors("stream", "rtsp://cam.example.net/live")
    assert len(errors) == 1
    assert "cam.example.net" in errors[0] and "169.254.169.254, a cloud metadata" in errors[0]
    assert source_errors("stream", "rtsp://nvr/live") == []
    # A camera registered while its name does not resolve (offline, another DNS view) is
    # accepted: the worker checks what it resolves to before every open.
    assert source_errors("stream", "rtsp://offline-cam.example.net/live") == []


def test_it_accepts_files_inside_the_allowed_directories(video_dir):
    assert source_errors("file", str(video_dir / "clip.mp4")) == []


def test_it_refuses_files_outside_the_allowed_directories(video_dir, tmp_path):
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    assert "outside the directories" in source_errors("file", str(outside))[0]
    # '..' is resolved before the check.
    sneaky = f"{video_dir}/../secret.mp4"
    assert "outside the directories" in source_errors("file", sneaky)[0]


def test_it_resolves_symlinks_before_checking_the_directory(video_dir, tmp_path):
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    link = video_dir / "link.mp4"
    os.symlink(outside, link)
    assert "outside the directories" in source_errors("file", str(link))[0]


def test_it_refuses_relative_and_missing_files(video_dir):
    assert "not an absolute path" in source_errors("file", "clip.mp4")[0]
    assert "does not exist" in source_errors("file", str(video_dir / "gone.mp4"))[0]


def test_it_accepts_uploads_inside_media_root(video_dir, settings):
    settings.MEDIA_ROOT.mkdir()
    (video_dir / "clip.mp4").rename(settings.MEDIA_ROOT / "up.mp4")
    assert source_errors("file", str(settings.MEDIA_ROOT / "up.mp4")) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"#EXTM3U\n#EXTINF:10,\n/srv/other.mp4\n", "playlist or manifest"),
        (b"ffconcat version 1.0\nfile 'http://example.com/a.mp4'\n", "playlist or manifest"),
        (b"just text", "not an MP4/MOV, AVI or Matroska/WebM file"),
    ],
)
def test_it_refuses_a_file_camera_whose_content_points_elsewhere(video_dir, content, reason):
    # Only local video containers: a file camera never makes FFmpeg open another file or URL.
    disguised = video_dir / "camera.mp4"
    disguised.write_bytes(content)
    errors = source_errors("file", str(disguised))
    assert len(errors) == 1 and reason in errors[0] and "camera.mp4" in errors[0]


@pytest.mark.parametrize(
    "source",
    ["file:///srv/videos/a.mp4", "concat:/a.mp4|/b.mp4", "subfile,,start,0,end,9,,:/a.mp4"],
)
def test_it_refuses_ffmpeg_protocol_urls_as_file_camera_sources(video_dir, source):
    assert "not an absolute path" in source_errors("file", source)[0]


def analysis_errors(**fields) -> dict[str, list[str]]:
    analysis = AnalysisFactory.build(camera=AnalysisFactory().camera, **fields)
    try:
        analysis.full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


def test_it_accepts_the_defaults():
    assert analysis_errors() == {}
    analysis = Analysis()
    assert (analysis.threshold, analysis.sampling_fps, analysis.window_size) == (0.6, 1.0, 60)
    assert analysis.rescore_interval_s == 3.0 and analysis.status == "draft"


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"normal_prompts": "  \n \n"}, "normal_prompts", "cannot be blank"),
        ({"anomaly_prompts": ""}, "anomaly_prompts", "This field cannot be blank"),
        ({"anomaly_prompts": "x" * 1001}, "anomaly_prompts", "keep each under 1000"),
        ({"normal_prompts": "\n".join(f"p{i}" for i in range(65))}, "normal_prompts", "At most 64"),
        ({"threshold": 0.0}, "threshold", "strictly between 0 and 1"),
        ({"threshold": 1.0}, "threshold", "strictly between 0 and 1"),
        ({"threshold": float("nan")}, "threshold", "strictly between 0 and 1"),
        ({"sampling_fps": 0.0}, "sampling_fps", "above 0"),
        ({"sampling_fps": -1.0}, "sampling_fps", "above 0"),
        ({"sampling_fps": 500.0}, "sampling_fps", "At most 120"),
        ({"window_size": 2}, "window_size", "greater than or equal to 5"),
    ],
)
def test_it_refuses_bad_analysis_fields(fields, field, reason):
    errors = analysis_errors(**fields)
    assert field in errors, errors
    assert any(reason in message for message in errors[field])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.net/x", "must use http or https, not 'ftp'"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://10.0.0.5/hook", "a private address"),
        ("http://127.0.0.1:9000/hook", "a loopback address"),
        ("https://internal.example.net/hook", "192.168.1.5, a private address"),
        ("https://gone.example.net/hook", "does not resolve"),
    ],
)
def test_it_refuses_webhooks_to_internal_or_unresolvable_receivers(
    settings, monkeypatch, url, reason
):
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = []
    resolve_as(
        monkeypatch,
        {"internal.example.net": ["192.168.1.5"], "hooks.example.net": ["93.184.215.14"]},
    )
    errors = analysis_errors(webhook_url=url).get("webhook_url", [])
    assert any(reason in message for message in errors), errors


def test_it_accepts_public_webhooks_and_networks_the_setting_opens(settings, monkeypatch):
    resolve_as(monkeypatch, {"hooks.example.net": ["93.184.215.14"]})
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = []
    assert analysis_errors(webhook_url="https://hooks.example.net/incident") == {}
    assert "webhook_url" in analysis_errors(webhook_url="http://10.0.0.5:8080/hook")
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = [ip_network("10.0.0.0/8")]
    assert analysis_errors(webhook_url="http://10.0.0.5:8080/hook") == {}


def test_it_lists_prompts_one_per_line():
    analysis = AnalysisFactory.build(normal_prompts=" a street \n\n a road\n")
    assert analysis.prompt_list("normal") == ["a street", "a road"]


def test_it_keeps_one_score_per_frame():
    score = FrameScoreFactory(frame_index=5)
    with pytest.raises(IntegrityError):
        FrameScore.objects.create(
            analysis=score.analysis,
            frame_index=5,
            time_s=0.5,
            score=0.1,
            normal_similarity=0.2,
            anomaly_similarity=0.1,
        )


def test_it_cascades_scores_and_analyses_with_the_camera():
    score = FrameScoreFactory()
    score.analysis.camera.delete()
    assert not Analysis.objects.exists() and not FrameScore.objects.exists()


def test_it_refuses_prompts_made_of_blank_lines():
    from detection.validators import prompt_lines

    with pytest.raises(ValidationError, match="at least one prompt"):
        prompt_lines(" \n\t\n  ")


def test_it_has_a_migration_for_every_model_change():
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
