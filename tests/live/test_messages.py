"""One builder per live message (detection/live/messages.py): the worker's live score and
the socket's snapshot carry a score in the same shape, and every URL comes from reverse()."""

from __future__ import annotations

import pytest
from django.urls import reverse

from detection.live import messages
from detection.live.consumers import snapshot
from detection.models import Analysis
from detection.worker import Worker
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("tiny_settings")]


class Recording:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def publish(self, analysis_id: int, kind: str, payload: dict) -> None:
        self.sent.append((kind, payload))


def test_it_sends_a_score_in_one_shape_live_and_in_snapshots(media, make_video):
    viewer = UserFactory()
    clip = make_video("clip.avi", frames=20, fps=10.0)
    camera = CameraFactory(kind="file", source=str(clip), viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="queued", sampling_fps=2.0)
    publisher = Recording()
    Worker(publisher=publisher, poll_seconds=0.05, once=True).run()

    live = [p for kind, p in publisher.sent if kind == "score"]
    stored = snapshot(viewer, analysis.pk, after=-1)["scores"]
    assert [s["frame_index"] for s in live] == [s["frame_index"] for s in stored] == [0, 5, 10, 15]
    for sent, held in zip(live, stored, strict=True):
        assert {k: sent[k] for k in messages.SCORE_KEYS} == held
    assert [s["previous"] for s in live] == [None, 0, 5, 10]

    frames = [p for kind, p in publisher.sent if kind == "frame"]
    url = reverse("detection:frame", args=[analysis.pk])
    assert frames[-1] == {"frame_index": 15, "url": f"{url}?v=15"}
    latest = Analysis.objects.get(pk=analysis.pk).last_frame_index
    assert snapshot(viewer, analysis.pk, after=None)["frame_url"] == f"{url}?v={latest}"


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
