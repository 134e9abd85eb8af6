"""Model validation: what `full_clean()` accepts and refuses, field by field."""

from __future__ import annotations

import os

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from cameras.models import Camera
from detection.models import Analysis, FrameScore
from tests.factories import AnalysisFactory, FrameScoreFactory

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
