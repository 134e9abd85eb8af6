"""Exploring results (issue 14, item 7): the frame behind a chart point, for those who may
see it; the live picture view; the results page's incidents, metadata and shading data.

Real video files decoded by the real view; real JPEGs on disk for the live camera's kept
frames; the access rule of every other picture view.
"""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from cameras.models import Camera
from detection.engine.errors import MediaError
from detection.engine.stills import MAX_WIDTH, frame_at
from detection.frames import frame_ring_dir, live_picture_path, watch_marker_path
from detection.web import frames as frame_views
from tests.support.factories import (
    AnalysisFactory,
    CameraFactory,
    FrameScoreFactory,
    IncidentFactory,
)
from tests.support.html import parse
from tests.support.sessions import login

pytestmark = pytest.mark.django_db


def sequential(path, index: int) -> np.ndarray:
    """Frame `index` as the worker reads it: decoding every frame from the start."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        for _ in range(index + 1):
            ok, image = cap.read()
            assert ok
        return image
    finally:
        cap.release()


def decoded(response) -> np.ndarray:
    data = b"".join(response.streaming_content) if response.streaming else response.content
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def frame_url(analysis, index: int) -> str:
    return reverse("detection:scored_frame", args=[analysis.pk, index])


@pytest.fixture
def clip(media, make_video):
    return make_video("street.mp4", frames=60, fps=10.0, size=(320, 240))


@pytest.fixture
def file_analysis(clip, viewer):
    camera = CameraFactory(kind=Camera.Kind.FILE, source=str(clip), viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="completed", sampling_fps=2.0)
    for index in (0, 5, 25, 55):
        FrameScoreFactory(analysis=analysis, frame_index=index, time_s=index / 10)
    return analysis


# --- the engine's one-frame decode ---------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "clip.avi", "clip.mkv"])
def test_it_decodes_the_very_frame_sequential_reading_gives(make_video, name):
    path = make_video(name, frames=40, fps=10.0)
    for index in (0, 1, 17, 39):
        assert np.abs(frame_at(path, index).astype(int) - sequential(path, index)).mean() < 0.5


def test_it_says_why_a_frame_cannot_be_decoded(make_video, tmp_path):
    path = make_video("short.mp4", frames=10)
    with pytest.raises(MediaError, match="no frame 50"):
        frame_at(path, 50)
    with pytest.raises(MediaError, match="whole number"):
        frame_at(path, -1)
    with pytest.raises(MediaError):
        frame_at(tmp_path / "missing.mp4", 0)


# --- files: decoded on demand ----------------------------------------------------------------


def test_it_shows_a_scored_frame_of_a_file_decoded_from_the_source(
    client, viewer, file_analysis, clip
):
    response = login(client, viewer).get(frame_url(file_analysis, 25))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["Cache-Control"].startswith("private")
    image = decoded(response)
    assert image.shape == (240, 320, 3)
    # JPEG-compressed, but the frame of index 25 and no other.
    expected = sequential(clip, 25).astype(int)
    error = np.abs(image.astype(int) - expected).mean()
    assert error < 6, error
    assert all(
        np.abs(image.astype(int) - sequential(clip, other).astype(int)).mean() > error + 2
        for other in (5, 55)
    )


def test_it_caps_the_size_of_a_decoded_frame(client, viewer, media, make_video):
    big = make_video("big.avi", frames=5, fps=5.0, size=(1280, 720))
    analysis = AnalysisFactory(
        camera=CameraFactory(kind="file", source=str(big), viewers=[viewer]), status="completed"
    )
    FrameScoreFactory(analysis=analysis, frame_index=3, time_s=0.6)
    image = decoded(login(client, viewer).get(frame_url(analysis, 3)))
    assert image.shape[:2] == (360, MAX_WIDTH)


def test_it_draws_the_localisation_box_on_a_decoded_frame(client, viewer, file_analysis):
    FrameScoreFactory(
        analysis=file_analysis, frame_index=30, box_x0=10, box_y0=10, box_x1=100, box_y1=90
    )
    image = decoded(login(client, viewer).get(frame_url(file_analysis, 30)))
    b, g, r = image[10:90, 10:12].reshape(-1, 3).mean(axis=0)  # the box's left edge
    assert r > 150 and g < 90 and b < 90


def test_it_refuses_frames_to_those_who_may_not_see_the_analysis(client, stranger, file_analysis):
    url = frame_url(file_analysis, 25)
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    assert login(client, stranger).get(url).status_code == 404
    assert client.post(url).status_code in (403, 405)


def test_it_answers_a_frame_without_a_score_with_a_reason(client, viewer, file_analysis):
    response = login(client, viewer).get(frame_url(file_analysis, 7))
    assert response.status_code == 404
    assert response.content.decode() == "No score is stored for frame 7."


def test_it_says_so_when_the_source_video_is_gone(client, viewer, file_analysis, clip):
    os.remove(clip)
    response = login(client, viewer).get(frame_url(file_analysis, 25))
    assert response.status_code == 410
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert text == frame_views.SOURCE_GONE
    assert str(clip.parent) not in text  # never a path on the server


# --- live cameras: from what is kept --------------------------------------------------------


@pytest.fixture
def live_analysis(media, viewer):
    camera = CameraFactory(kind=Camera.Kind.STREAM, viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="running")
    for index in (1, 2, 3):
        FrameScoreFactory(analysis=analysis, frame_index=index, time_s=index)
    return analysis


def jpeg_of(value: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((48, 64, 3), value, np.uint8))
    assert ok
    return data.tobytes()


def test_it_shows_a_live_frame_from_the_kept_ring(client, viewer, live_analysis):
    ring = frame_ring_dir(live_analysis.pk)
    ring.mkdir(parents=True)
    (ring / "2.jpg").write_bytes(jpeg_of(200))
    response = login(client, viewer).get(frame_url(live_analysis, 2))
    assert response.status_code == 200
    assert decoded(response).mean() == pytest.approx(200, abs=3)


def test_it_shows_an_older_live_frame_an_incident_kept(client, viewer, live_analysis):
    name = default_storage.save("incidents/frames/9/3.jpg", ContentFile(jpeg_of(90)))
    IncidentFactory(analysis=live_analysis, frames=[name], peak_frame_index=3)
    response = login(client, viewer).get(frame_url(live_analysis, 3))
    assert response.status_code == 200
    assert decoded(response).mean() == pytest.approx(90, abs=3)


def test_it_says_a_live_frame_is_no_longer_kept(client, viewer, live_analysis):
    response = login(client, viewer).get(frame_url(live_analysis, 1))
    assert response.status_code == 404
    assert response.content.decode() == frame_views.NOT_KEPT
    assert "no longer kept" in frame_views.NOT_KEPT


# --- the live picture view --------------------------------------------------------------------


def picture_url(analysis) -> str:
    return reverse("detection:live_picture", args=[analysis.pk])


def test_it_serves_a_fresh_live_picture_and_marks_the_analysis_watched(
    client, viewer, live_analysis
):
    login(client, viewer)
    marker = watch_marker_path(live_analysis.pk)
    waiting = client.get(picture_url(live_analysis))
    assert waiting.status_code == 404 and waiting["Retry-After"] == "1"
    assert "not streaming" in waiting.content.decode()
    assert marker.exists()  # the worker starts writing

    live_picture_path(live_analysis.pk).write_bytes(jpeg_of(120))
    response = client.get(picture_url(live_analysis))
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    assert decoded(response).mean() == pytest.approx(120, abs=3)

    old = time.time() - 30  # the worker stopped writing it: not live any more
    os.utime(live_picture_path(live_analysis.pk), (old, old))
    assert client.get(picture_url(live_analysis)).status_code == 404


def test_it_touches_the_watch_marker_at_most_once_a_second(client, viewer, live_analysis):
    login(client, viewer)
    client.get(picture_url(live_analysis))
    marker = watch_marker_path(live_analysis.pk)
    recent = time.time() - 0.5
    os.utime(marker, (recent, recent))
    client.get(picture_url(live_analysis))
    assert marker.stat().st_mtime == pytest.approx(recent, abs=0.01)
    old = time.time() - 5
    os.utime(marker, (old, old))
    client.get(picture_url(live_analysis))
    assert time.time() - marker.stat().st_mtime < 2


def test_it_keeps_the_live_picture_from_strangers_and_file_analyses(
    client, stranger, viewer, live_analysis, file_analysis
):
    assert login(client, stranger).get(picture_url(live_analysis)).status_code == 404
    assert not watch_marker_path(live_analysis.pk).exists()  # a stranger keeps nothing going
    response = login(client, viewer).get(picture_url(file_analysis))
    assert response.status_code == 404
    assert "Only live cameras" in response.content.decode()


def test_it_deletes_the_kept_pictures_with_the_analysis(
    django_capture_on_commit_callbacks, live_analysis
):
    ring = frame_ring_dir(live_analysis.pk)
    ring.mkdir(parents=True)
    (ring / "1.jpg").write_bytes(jpeg_of(1))
    live_picture_path(live_analysis.pk).write_bytes(jpeg_of(2))
    watch_marker_path(live_analysis.pk).touch()
    pk = live_analysis.pk
    with django_capture_on_commit_callbacks(execute=True):
        live_analysis.delete()
    assert not ring.exists()
    assert not live_picture_path(pk).exists() and not watch_marker_path(pk).exists()


# --- the results page ------------------------------------------------------------------------


def test_it_puts_incidents_above_collapsed_labelled_metadata_and_hands_over_their_ranges(
    client, viewer, file_analysis
):
    file_analysis.metadata = {"total_frames": 60, "fps": 10.0, "something_new": 3}
    file_analysis.save()
    IncidentFactory(analysis=file_analysis, start_time_s=2.5, end_time_s=4.0)
    content = login(client, viewer).get(file_analysis.get_absolute_url()).content.decode()
    page = parse(content)
    details = page.one("details", data_role="metadata")
    assert details.get("open") is None  # collapsed by default
    rows = {th.text: th.parent.one("td").text for th in details.find_all("th", scope="row")}
    assert rows["Frames decoded"] == "60"
    assert rows["Frame rate used for timestamps"] == "10 frames/s"
    assert rows["Something new"] == "3"  # a key added later still shows
    assert content.index(">Incidents</h2>") < content.index(">Metadata</h2>")
    ranges = json.loads(page.one("script", id="incident-ranges").raw_text)
    assert [(r["start_time_s"], r["end_time_s"], r["open"]) for r in ranges] == [(2.5, 4.0, False)]
    root = page.one(id="analysis-page")
    assert root["data-frame-url"] == frame_url(file_analysis, 0)


def test_it_offers_an_incident_clip_once_written(client, viewer, file_analysis):
    from detection.frames import incident_clip_path

    incident = IncidentFactory(analysis=file_analysis)
    login(client, viewer)
    row = parse(client.get(file_analysis.get_absolute_url()).content.decode()).one(
        "tr", data_incident_id=str(incident.pk)
    )
    assert not row.one("td", data_role="clip").find_all("video")
    path = incident_clip_path(incident.pk)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    row = parse(client.get(file_analysis.get_absolute_url()).content.decode()).one(
        "tr", data_incident_id=str(incident.pk)
    )
    video = row.one("td", data_role="clip").one("video")
    assert video["src"] == reverse("detection:incident_clip", args=[incident.pk])
