"""One builder per live message (detection/live/messages.py): the worker's live score and
the socket's snapshot carry a score in the same shape, and every URL comes from reverse().
The score of the frame whose picture was just written carries the picture's URL: there is
no message per picture."""

from __future__ import annotations

import pytest
from django.urls import reverse

from detection.frames import latest_frame_path
from detection.live import messages
from detection.live.consumers import snapshot
from detection.models import Analysis
from detection.worker import Worker, recording
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("tiny_settings")]


class Recording:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        # Per score that names a picture: the picture stored when the score was published.
        self.pictures: dict[int, bytes] = {}

    def publish(self, analysis_id: int, kind: str, payload: dict) -> None:
        self.sent.append((kind, payload))
        if kind == "score" and "frame_url" in payload:
            path = latest_frame_path(analysis_id)
            self.pictures[payload["frame_index"]] = path.read_bytes() if path.exists() else b""

    def flush(self, timeout: float = 5.0) -> bool:
        return True  # kept as published: nothing waits


def run_worker(viewer, make_video) -> tuple[Analysis, Recording]:
    clip = make_video("clip.avi", frames=20, fps=10.0)
    camera = CameraFactory(kind="file", source=str(clip), viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="queued", sampling_fps=2.0)
    publisher = Recording()
    Worker(publisher=publisher, poll_seconds=0.05, once=True).run()
    return analysis, publisher


def test_it_sends_a_score_in_one_shape_live_and_in_snapshots(media, make_video):
    viewer = UserFactory()
    analysis, publisher = run_worker(viewer, make_video)

    live = [p for kind, p in publisher.sent if kind == "score"]
    stored = snapshot(viewer, analysis.pk, after=-1)["scores"]
    assert [s["frame_index"] for s in live] == [s["frame_index"] for s in stored] == [0, 5, 10, 15]
    for sent, held in zip(live, stored, strict=True):
        assert {k: sent[k] for k in messages.SCORE_KEYS} == held
    assert [s["previous"] for s in live] == [None, 0, 5, 10]

    # One message per score: the picture rides on the score of the frame it shows.
    assert {kind for kind, _ in publisher.sent} <= {"score", "status", "progress", "incident"}
    url = reverse("detection:frame", args=[analysis.pk])
    pictured = [s for s in live if "frame_url" in s]
    assert pictured[-1] is live[-1] and live[-1]["frame_url"] == f"{url}?v=15"
    assert all(s["frame_url"] == f"{url}?v={s['frame_index']}" for s in pictured)
    # Written before its score was published: a page that loads it at once finds it.
    assert all(p.startswith(b"\xff\xd8") for p in publisher.pictures.values())
    assert publisher.pictures[15] == latest_frame_path(analysis.pk).read_bytes()
    latest = Analysis.objects.get(pk=analysis.pk).last_frame_index
    assert snapshot(viewer, analysis.pk, after=None)["frame_url"] == f"{url}?v={latest}"


def test_it_names_no_picture_in_a_score_when_the_picture_cannot_be_written(
    media, make_video, monkeypatch, caplog
):
    def full_disk(path, data) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recording, "write_atomic", full_disk)
    with caplog.at_level("WARNING", logger="detection.worker.recording"):
        _, publisher = run_worker(UserFactory(), make_video)
    live = [p for kind, p in publisher.sent if kind == "score"]
    # Every score still goes out; none points at a picture that is not there.
    assert [s["frame_index"] for s in live] == [0, 5, 10, 15]
    assert not [s for s in live if "frame_url" in s]
    assert any("cannot write the live frame" in r.getMessage() for r in caplog.records)


def test_it_never_versions_a_frame_url_with_none():
    assert messages.frame_url(7, None) is None
    assert messages.frame_url(7, 3) == f"{reverse('detection:frame', args=[7])}?v=3"


def test_it_refuses_fields_a_status_message_does_not_have():
    assert messages.status_message("running", progress=0.5) == {
        "status": "running",
        "progress": 0.5,
    }
    with pytest.raises(TypeError, match="progres"):
        messages.status_message("running", progres=0.5)
