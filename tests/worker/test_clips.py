"""Incident clips from the real worker: a file analysis with a planted anomaly, a live camera
(a video file paced in real time), deletion with the incident, and failures that cost only the
clip."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest

from detection.engine.clip import CLIP_POST_S, CLIP_PRE_S
from detection.engine.sources import Backoff, PacedFileSource
from detection.frames import incident_clip_path
from detection.live.publisher import NullPublisher
from detection.models import Analysis, Incident
from detection.worker.clips import RING_MAX_S, LiveClips
from detection.worker.loop import Worker
from tests.support.factories import AnalysisFactory, CameraFactory, IncidentFactory
from tests.support.media import scene, write_tampered_video
from tests.support.waiting import wait_until

# The worker runs for real in most tests here: those are slow.
pytestmark = [pytest.mark.usefixtures("tiny_settings"), pytest.mark.django_db]

# 10 s learned as normal, 8 s normal, the lens covered for 4 s, 8 s normal again; 4 fps.
LEARN_S, NORMAL_S, COVERED_S, FPS = 10, 8, 4, 4
TOTAL_S = LEARN_S + 2 * NORMAL_S + COVERED_S


@pytest.fixture
def encoder():
    """The worker's "pictures" thread, for the LiveClips a test makes without a worker."""
    with ThreadPoolExecutor(1, thread_name_prefix="pictures") as executor:
        yield executor


def probe(path: Path) -> tuple[str, int, int, float]:
    """(codec, width, frames decoded, duration in s) of a clip, read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return (
            stream.codec_context.name,
            stream.codec_context.width,
            frames,
            container.duration / 1e6,
        )


def tampered_analysis(media: Path, **fields) -> Analysis:
    video = write_tampered_video(media / "tampered.avi", LEARN_S, NORMAL_S, COVERED_S, FPS)
    camera = CameraFactory(kind="file", source=str(video))
    return AnalysisFactory(
        camera=camera,
        status="queued",
        mode="normality",
        learning_seconds=LEARN_S,
        auto_threshold=True,
        sampling_fps=2.0,
        incident_open_frames=2,
        incident_close_frames=2,
        **fields,
    )


def run_once() -> None:
    Worker(publisher=NullPublisher(), poll_seconds=0.05, once=True).run()


@pytest.mark.slow
def test_it_writes_a_decodable_clip_from_5_s_before_to_5_s_after_a_file_incident(media):
    analysis = tampered_analysis(media)
    run_once()
    analysis.refresh_from_db()
    assert analysis.status == "completed", analysis.error_message
    incident = Incident.objects.get(analysis=analysis)
    assert LEARN_S + NORMAL_S <= incident.start_time_s < LEARN_S + NORMAL_S + 1
    path = incident_clip_path(incident.pk)
    assert incident.clip_url == f"/incidents/{incident.pk}/clip.mp4"
    codec, width, frames, duration = probe(path)
    expected = min(incident.end_time_s + CLIP_POST_S, TOTAL_S) - (
        incident.start_time_s - CLIP_PRE_S
    )
    assert codec == "h264" and width == 320
    assert duration == pytest.approx(expected, abs=1.0)
    # The source's own 4 fps (more than the 2 sampled, less than the 5 wanted).
    assert frames == pytest.approx(expected * FPS, abs=FPS)
    assert not list(path.parent.glob("*.part"))


@pytest.mark.slow
def test_it_keeps_scoring_and_storing_when_a_clip_cannot_be_written(media, caplog):
    analysis = tampered_analysis(media)
    clips_dir = incident_clip_path(1).parent
    clips_dir.parent.mkdir(parents=True, exist_ok=True)
    clips_dir.write_text("a file where the clips folder should be")
    with caplog.at_level(logging.WARNING, logger="detection.worker.clips"):
        run_once()
    analysis.refresh_from_db()
    assert analysis.status == "completed", analysis.error_message
    incident = Incident.objects.get(analysis=analysis)
    assert analysis.frames_scored == TOTAL_S * 2 and incident.clip_url is None
    assert f"incident {incident.pk}: cannot write its clip" in caplog.text


@pytest.mark.slow
def test_it_writes_a_clip_a_resumed_analysis_did_not_get_to(media):
    analysis = tampered_analysis(media)
    run_once()
    incident = Incident.objects.get(analysis=analysis)
    incident_clip_path(incident.pk).unlink()
    # Taken up again (as after a crash): the incident it finished gets its clip.
    Analysis.objects.filter(pk=analysis.pk).update(status="queued")
    run_once()
    assert Incident.objects.get(pk=incident.pk).clip_url is not None


@pytest.mark.slow
def test_it_deletes_the_clip_and_frames_with_the_incident_and_with_its_analysis(
    media, django_capture_on_commit_callbacks
):
    analysis = tampered_analysis(media)
    run_once()
    incident = Incident.objects.get(analysis=analysis)
    files = [
        incident_clip_path(incident.pk),
        Path(incident.thumbnail.path),
        *(Path(incident.thumbnail.storage.path(name)) for name in incident.frames),
    ]
    assert len(files) >= 4 and all(f.exists() for f in files)
    with django_capture_on_commit_callbacks(execute=True):
        Analysis.objects.get(pk=analysis.pk).delete()  # the incident goes by cascade
    assert not any(f.exists() for f in files), [f for f in files if f.exists()]
    assert not (files[2].parent).exists()  # the incident's frames folder too

    other = tampered_analysis(media)
    run_once()
    incident = Incident.objects.get(analysis=other)
    clip = incident_clip_path(incident.pk)
    assert clip.exists()
    with django_capture_on_commit_callbacks(execute=True):
        incident.delete()
    assert not clip.exists()


@pytest.mark.slow
def test_it_keeps_the_files_when_the_delete_is_rolled_back(media):
    from django.db import transaction

    analysis = tampered_analysis(media)
    run_once()
    incident = Incident.objects.get(analysis=analysis)
    clip = incident_clip_path(incident.pk)
    with pytest.raises(RuntimeError), transaction.atomic():
        incident.delete()
        raise RuntimeError("rolled back")
    assert clip.exists()


FAST = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.0,
    "backoff": Backoff(initial_s=0.1, cap_s=0.5, jitter=0.0, max_failures=50, max_opens=100),
}


@pytest.mark.slow
def test_it_records_a_live_incident_with_its_pre_roll_and_post_roll(media, make_video):
    """A camera (a video file paced in real time) watched at 2 fps: nothing anomalous for a
    while, then every frame, then nothing again; the clip covers the incident plus 5 s on
    each side, from the worker's ring and a streaming encode, and appears once complete."""
    source = make_video("webcam.avi", frames=100, fps=25.0, size=(640, 360))
    camera = CameraFactory(kind="webcam", source="0")
    analysis = AnalysisFactory(
        camera=camera,
        status="queued",
        sampling_fps=2.0,
        motion_gating=False,
        threshold=2.0,  # no score reaches it (the factory does not validate)
        incident_open_frames=2,
        incident_close_frames=2,
    )
    worker = Worker(
        publisher=NullPublisher(),
        poll_seconds=0.1,
        source_options=FAST,
        open_source=lambda kind, src, **o: PacedFileSource(source, loop=True, **o),
    )

    def tick_until(condition, timeout: float, what: str) -> None:
        def ticked():
            worker.tick()
            return condition()

        wait_until(ticked, timeout, what, every=0.02)

    try:
        tick_until(lambda: analysis.scores.filter(time_s__gte=7.0).exists(), 40, "7 s scored")
        job = worker.jobs[analysis.pk]
        job.recorder.set_threshold(0.0001)  # every frame is now anomalous
        tick_until(lambda: analysis.incidents.exists(), 20, "the incident to open")
        incident = analysis.incidents.get()
        assert worker.clips.live[analysis.pk].recordings  # recording, nothing served yet
        assert incident.clip_url is None
        started = time.monotonic()
        tick_until(lambda: time.monotonic() - started > 2.0, 10, "2 s of incident")
        job.recorder.set_threshold(2.0)
        tick_until(lambda: Incident.objects.get(pk=incident.pk).end_time_s, 20, "the close")
        tick_until(lambda: incident_clip_path(incident.pk).exists(), 20, "the clip")
    finally:
        worker.shutdown()
    incident.refresh_from_db()
    codec, width, frames, duration = probe(incident_clip_path(incident.pk))
    expected = (incident.end_time_s + CLIP_POST_S) - (incident.start_time_s - CLIP_PRE_S)
    assert codec == "h264" and width == 640
    assert duration == pytest.approx(expected, abs=1.0)
    # Taken at up to 4 frames/s (more than the 2 sampled) when the loop keeps up; on a busy
    # 2-core machine it ticks less often, so only "a moving picture" is asserted here.
    assert frames >= expected
    ring = worker.clips.live.get(analysis.pk)
    assert ring is None  # the job's clips ended with the worker


def test_it_keeps_a_bounded_pre_roll_and_starts_a_clip_from_it(media, encoder):
    analysis = AnalysisFactory(sampling_fps=1.0, incident_open_frames=3)
    clips = LiveClips(analysis, encoder=encoder)
    assert clips.fps == 4.0 and clips.span_s == CLIP_PRE_S + 3 + 2
    frame = scene(720, 1280)
    for i in range(200):  # 50 s at 4 frames/s
        clips.frame(frame, i / 4)
    # Only the pre-roll is kept, small: JPEGs of the clip's size (640 px wide).
    assert len(clips.ring) <= clips.span_s * 4 + 2
    assert clips.ring[0][0] >= 49.75 - clips.span_s
    incident = IncidentFactory(analysis=analysis, start_time_s=47.0, end_time_s=None)
    clips.incident(incident)
    recording = clips.recordings[incident.pk]
    assert recording.writer.first_s == pytest.approx(47.0 - CLIP_PRE_S, abs=0.25)
    incident.end_time_s = 50.0
    clips.incident(incident)  # closed: 5 s more, then the clip is written
    for i in range(200, 230):
        clips.frame(frame, i / 4)
    assert not clips.recordings
    _, width, _, duration = probe(incident_clip_path(incident.pk))
    assert width == 640 and duration == pytest.approx(55.0 - 42.0, abs=0.5)


def test_it_compresses_the_pre_roll_off_the_scoring_loop(media, monkeypatch):
    from detection.worker import clips as clips_module

    compress = clips_module._ring_jpeg
    threads: set[str] = set()

    def slow(image):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return compress(image)

    monkeypatch.setattr(clips_module, "_ring_jpeg", slow)
    analysis = AnalysisFactory(sampling_fps=1.0, incident_open_frames=3)
    with ThreadPoolExecutor(1, thread_name_prefix="pictures") as encoder:
        clips = LiveClips(analysis, encoder=encoder)
        frame = scene(720, 1280)
        longest = 0.0
        for i in range(40):  # 10 s at 4 frames/s
            started = time.monotonic()
            clips.frame(frame, i / 4)
            longest = max(longest, time.monotonic() - started)
            time.sleep(0.06)  # the encoder keeps up, as at 4 frames/s
        incident = IncidentFactory(analysis=analysis, start_time_s=9.0, end_time_s=None)
        clips.incident(incident)
        recording = clips.recordings[incident.pk]
    # The loop never waited for a compression; the clip still starts 5 s before.
    assert longest < 0.04, longest
    assert threads and all(name.startswith("pictures") for name in threads)
    assert recording.writer.first_s == pytest.approx(9.0 - CLIP_PRE_S, abs=0.25)
    recording.writer.abort()


def test_it_caps_the_ring_whatever_the_settings(media, encoder):
    slow = AnalysisFactory(sampling_fps=0.1, incident_open_frames=1000)
    assert LiveClips(slow, encoder=encoder).span_s == RING_MAX_S


def test_it_ends_a_closed_incidents_clip_when_the_camera_goes_quiet(media, encoder):
    class Silent:
        """A camera that delivered nothing new since (`newest_frame` reads `peek`)."""

        def peek(self):
            return None

    analysis = AnalysisFactory(sampling_fps=1.0)
    clips = LiveClips(analysis, Silent(), encoder=encoder)
    for i in range(20):
        clips.frame(scene(120, 160, t=i), i / 4)
    incident = IncidentFactory(analysis=analysis, start_time_s=3.0, end_time_s=None)
    clips.incident(incident)
    incident.end_time_s = 4.5
    clips.incident(incident)
    clips.poll(time.monotonic() + 1)
    assert clips.recordings  # the post-roll may still come
    clips.poll(time.monotonic() + CLIP_POST_S + 1)
    assert not clips.recordings and incident_clip_path(incident.pk).exists()
