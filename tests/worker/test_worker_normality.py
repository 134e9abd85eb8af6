"""The worker learning a camera's normal: learning frames, the saved memory, examples picked
up while running, tampering found, frames kept for feedback."""

from __future__ import annotations

import numpy as np
import pytest

from detection.models import Analysis, Exemplar, FrameScore, Incident, LearnedMemory
from detection.worker.loop import Worker
from detection.worker.memory import model_key
from tests.support.media import scene, write_tampered_video
from tests.support.worker import RecordingPublisher, file_analysis

pytestmark = [pytest.mark.usefixtures("tiny_settings"), pytest.mark.django_db]

LEARN_S, NORMAL_S, COVERED_S, FPS = 10, 4, 4, 4


def run(analysis: Analysis) -> Worker:
    worker = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True)
    worker.run()
    analysis.refresh_from_db()
    return worker


@pytest.fixture
def tampered(media):
    return write_tampered_video(media / "tampered.avi", LEARN_S, NORMAL_S, COVERED_S, FPS)


def normality_analysis(path, **fields) -> Analysis:
    fields = {
        "mode": "normality",
        "learning_seconds": LEARN_S,
        "auto_threshold": True,
        "sampling_fps": 2.0,
        "incident_open_frames": 2,
        "incident_close_frames": 2,
        **fields,
    }
    return file_analysis(path, **fields)


def test_it_learns_first_then_flags_a_covered_lens(tampered):
    analysis = normality_analysis(tampered)
    run(analysis)
    assert analysis.status == "completed", analysis.error_message
    rows = list(FrameScore.objects.filter(analysis=analysis).order_by("frame_index"))
    learning = [r for r in rows if r.learning]
    judged = [r for r in rows if not r.learning]
    assert [r.time_s < LEARN_S for r in rows] == [r.learning for r in rows]
    assert len(learning) == LEARN_S * 2
    # Learning frames keep their prompt score, have no novelty, and are never anomalies.
    assert all(r.prompt_score is not None and r.novelty is None for r in learning)
    assert all(r.novelty is not None and r.score == r.novelty for r in judged)
    covered_rows = [r for r in judged if LEARN_S + NORMAL_S <= r.time_s < LEARN_S + NORMAL_S + 4]
    normal_rows = [r for r in judged if r not in covered_rows]
    assert min(r.score for r in covered_rows) >= 0.5
    assert np.mean([r.score >= 0.5 for r in normal_rows]) <= 0.1
    # One incident, over the covered stretch, with frames kept around its peak.
    incidents = list(Incident.objects.filter(analysis=analysis))
    assert len(incidents) == 1
    incident = incidents[0]
    assert LEARN_S + NORMAL_S <= incident.start_time_s < LEARN_S + NORMAL_S + 1
    assert 2 <= len(incident.frames) <= 5
    # Only frames of the incident itself: all covered, none of the normal ones around it.
    kept = [int(name.rsplit("/", 1)[1].removesuffix(".jpg")) / FPS for name in incident.frames]
    assert all(LEARN_S + NORMAL_S <= t < LEARN_S + NORMAL_S + COVERED_S for t in kept), kept
    # What it learned is saved, with the model that embedded it; metadata says what ran.
    memory = LearnedMemory.objects.get(analysis=analysis)
    assert memory.frames == LEARN_S * 2
    meta = analysis.metadata
    assert (meta["mode"], meta["learned_frames"], meta["threshold_mode"]) == (
        "normality",
        LEARN_S * 2,
        "auto",
    )
    assert meta["anomaly_threshold"] == meta["auto_threshold"] == 0.5
    assert analysis.threshold_in_use == 0.5
    assert analysis.peak_time_s >= LEARN_S  # the peak is never a learning frame


def test_it_resumes_with_the_saved_memory_without_relearning(tampered):
    analysis = normality_analysis(tampered)
    run(analysis)
    scores = dict(FrameScore.objects.filter(analysis=analysis).values_list("frame_index", "score"))
    # A worker that takes over after the learning period: drop the judged frames, resume.
    FrameScore.objects.filter(analysis=analysis, learning=False).delete()
    Incident.objects.filter(analysis=analysis).delete()
    Analysis.objects.filter(pk=analysis.pk).update(status="queued")
    run(analysis)
    resumed = FrameScore.objects.filter(analysis=analysis, learning=False)
    assert resumed.exists()
    for index, score in resumed.values_list("frame_index", "score"):
        assert score == pytest.approx(scores[index], abs=1e-5)


def test_it_refuses_a_memory_learned_by_another_model(tampered):
    analysis = normality_analysis(tampered)
    run(analysis)
    LearnedMemory.objects.filter(analysis=analysis).update(model_spec="ViT-L-14|openai|regions")
    FrameScore.objects.filter(analysis=analysis, learning=False).delete()
    Analysis.objects.filter(pk=analysis.pk).update(status="queued")
    run(analysis)
    assert analysis.status == "failed"
    assert "ViT-L-14 / openai / regions" in analysis.error_message
    assert "re-run the analysis to relearn" in analysis.error_message


def test_it_fails_clearly_in_normality_mode_with_nothing_to_learn_from(media, make_video):
    analysis = normality_analysis(make_video("a.avi"), learning_seconds=0)
    run(analysis)
    assert analysis.status == "failed"
    assert "learning seconds or add normal examples" in analysis.error_message


def _exemplar(analysis, kind, image, **fields) -> Exemplar:
    import cv2
    from django.core.files.base import ContentFile

    _, data = cv2.imencode(".jpg", image)
    exemplar = Exemplar(camera=analysis.camera, kind=kind, **fields)
    exemplar.image.save("example.jpg", ContentFile(data.tobytes()), save=False)
    exemplar.save()
    return exemplar


def test_it_embeds_examples_and_picks_up_new_ones_while_running(tampered):
    from tests.support.media import covered

    analysis = normality_analysis(tampered, learning_seconds=0, auto_threshold=True)
    for t in np.arange(0, 10, 0.5):
        _exemplar(analysis, "normal", scene(240, 320, seed=1, t=t))
    worker = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True)
    assert worker.claim_step()
    job = worker.jobs[analysis.pk]
    assert job.detector.has_normal
    stored = list(Exemplar.objects.filter(camera=analysis.camera))
    assert {e.model_spec for e in stored} == {model_key(job.detector)}
    assert all(e.embedding for e in stored)
    # A confirmed anomaly added while the analysis runs reaches the detector at the next poll.
    dark = covered(scene(240, 320, seed=1, t=0))
    _exemplar(analysis, "anomaly", dark, source="feedback")
    worker.examples_step()
    assert len(job.detector.normality.anomalies) == 1
    features = job.detector.embed([dark])
    assert job.detector.normality.score(features)[0] >= 0.5
    worker.shutdown()


def test_it_re_embeds_examples_when_the_model_changes(tampered):
    analysis = normality_analysis(tampered, learning_seconds=0)
    exemplar = _exemplar(analysis, "normal", scene(240, 320, seed=1, t=0))
    Exemplar.objects.filter(pk=exemplar.pk).update(
        model_spec="ViT-L-14|openai", embedding=b"\0" * 16
    )
    worker = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True)
    assert worker.claim_step()
    exemplar.refresh_from_db()
    assert exemplar.model_spec == model_key(worker.jobs[analysis.pk].detector)
    assert len(bytes(exemplar.embedding)) > 16
    worker.shutdown()


def test_it_marks_learning_frames_in_live_messages(tampered):
    normality_analysis(tampered)
    worker = Worker(publisher=RecordingPublisher(), poll_seconds=0.05, once=True)
    worker.run()
    scores = worker.publisher.kinds("score")
    assert [m["learning"] for m in scores] == [m["time_s"] < LEARN_S for m in scores]
    later = [m for m in scores if not m["learning"]]
    assert all(m["novelty"] is not None and m["prompt_score"] is not None for m in later)
    assert {m["threshold"] for m in later} == {0.5}
