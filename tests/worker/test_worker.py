"""The detection worker, step by step and as a real process (SIGTERM, SIGKILL, two workers)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from ipaddress import ip_network

import cv2
import pytest
from django.utils import timezone

from detection.api import analyze_video
from detection.models import Analysis, FrameScore, Incident
from detection.worker.loop import Worker
from tests.support import ROOT
from tests.support.factories import AnalysisFactory
from tests.support.processes import manage, start_worker
from tests.support.waiting import wait_until
from tests.support.worker import (
    ANOMALY,
    NORMAL,
    RecordingPublisher,
    expected_indices,
    file_analysis,
)

pytestmark = pytest.mark.usefixtures("tiny_settings")


def worker(**kw) -> tuple[Worker, RecordingPublisher]:
    publisher = RecordingPublisher()
    return Worker(publisher=publisher, poll_seconds=0.05, **{"once": True, **kw}), publisher


@pytest.mark.django_db
def test_it_claims_a_queued_analysis_exactly_once(media, make_video):
    analysis = file_analysis(make_video("a.avi"))
    first, _ = worker()
    second, _ = worker()
    assert first.claim_step() is True
    assert second.claim_step() is False
    analysis.refresh_from_db()
    assert analysis.status == "running" and analysis.lease_owner == first.owner
    assert analysis.lease_expires_at > timezone.now() and analysis.started_at is not None
    first.shutdown()
    analysis.refresh_from_db()
    assert (analysis.status, analysis.lease_owner, analysis.lease_expires_at) == (
        "queued",
        "",
        None,
    )


@pytest.mark.django_db
def test_it_takes_over_an_expired_lease(media, make_video):
    analysis = file_analysis(make_video("a.avi"))
    dead, _ = worker()
    dead.claim_step()
    Analysis.objects.filter(pk=analysis.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    heir, _ = worker()
    assert heir.claim_step() is True
    analysis.refresh_from_db()
    assert analysis.lease_owner == heir.owner
    # The dead worker, should it wake up, finds its lease gone and stops writing.
    dead.heartbeat_step()
    assert dead.jobs == {}
    heir.shutdown()


@pytest.mark.django_db
def test_it_leaves_drafts_disabled_cameras_and_live_cameras_alone_in_once_mode(media, make_video):
    file_analysis(make_video("d.avi"), status="draft")
    disabled = file_analysis(make_video("e.avi"))
    disabled.camera.enabled = False
    disabled.camera.save()
    AnalysisFactory(status="queued")  # a stream camera
    w, _ = worker()
    assert w.claim_step() is False


@pytest.mark.slow
@pytest.mark.django_db
def test_it_stores_what_analyze_video_computes(media, make_video):
    path = make_video("street.mp4", frames=60, fps=10.0)
    analysis = file_analysis(path, sampling_fps=2.0)
    w, publisher = worker(batch_size=3)
    w.run()
    analysis.refresh_from_db()
    expected = analyze_video(path, NORMAL, ANOMALY, sampling_rate_fps=2.0)
    stored = list(analysis.scores.order_by("frame_index"))
    assert [s.frame_index for s in stored] == [d["frame_index"] for d in expected["data"]]
    assert [s.score for s in stored] == pytest.approx(
        [d["score"] for d in expected["data"]], abs=1e-6
    )
    assert [s.time_s for s in stored] == pytest.approx([d["time_s"] for d in expected["data"]])
    assert analysis.status == "completed" and analysis.progress == 1.0
    assert analysis.frames_scored == 12 and analysis.lease_owner == ""
    assert analysis.peak_score == pytest.approx(expected["metadata"]["max_anomaly_score"])
    assert analysis.average_score == pytest.approx(expected["metadata"]["average_score"])
    assert analysis.metadata["total_frames"] == 60
    assert [p["frame_index"] for p in publisher.kinds("score")] == [s.frame_index for s in stored]
    assert publisher.kinds("status")[-1]["status"] == "completed"


@pytest.mark.django_db
def test_it_reports_progress_as_frames_scored_of_frames_expected(media, make_video):
    # 40 frames at 10 fps sampled at 2 fps: 8 samples expected. Decoding runs ahead of
    # scoring (prefetch); progress follows what is stored.
    analysis = file_analysis(make_video("p.avi", frames=40, fps=10.0), sampling_fps=2.0)
    w, publisher = worker(batch_size=3)
    w.claim_step()
    analysis.refresh_from_db()
    assert analysis.metadata["expected_frames"] == 8
    while w.jobs:
        pending = w.gather_step()
        if pending:
            w.score_step(pending)
        w.finish_step()
    progress = publisher.kinds("progress")
    assert [(p["scored"], p["expected"]) for p in progress] == [
        (3, 8),
        (6, 8),
        (8, 8),
        (8, 8),
    ]
    assert [p["progress"] for p in progress] == [3 / 8, 6 / 8, 0.999, 1.0]
    assert publisher.kinds("status")[-1] == {"status": "completed", "progress": 1.0}
    analysis.refresh_from_db()
    assert analysis.progress == 1.0 and analysis.metadata["expected_frames"] == 8


@pytest.mark.django_db
def test_it_counts_skipped_black_frames_as_done(media, make_video):
    path = make_video("b.avi", frames=40, fps=10.0, black=range(0, 10))
    file_analysis(path, sampling_fps=2.0)
    w, publisher = worker(batch_size=6)
    w.run()
    progress = publisher.kinds("progress")
    # Samples 0 and 5 are black: the first store (frames 10-35) is 8 of 8 samples along.
    assert [(p["scored"], p["expected"], p["progress"]) for p in progress] == [
        (6, 8, 0.999),
        (6, 8, 1.0),
    ]


@pytest.mark.django_db
def test_it_resumes_after_the_last_stored_frame(media, make_video):
    path = make_video("r.avi", frames=50, fps=10.0)
    analysis = file_analysis(path)
    FrameScore.objects.create(
        analysis=analysis,
        frame_index=20,
        time_s=2.0,
        score=0.5,
        normal_similarity=0.1,
        anomaly_similarity=0.1,
    )
    w, _ = worker()
    w.run()
    assert list(analysis.scores.values_list("frame_index", flat=True)) == [20, 30, 40]


@pytest.mark.django_db
def test_it_batches_frames_of_several_analyses_together(media, make_video):
    a = file_analysis(make_video("a.avi", frames=30))
    b = file_analysis(make_video("b.avi", frames=30), anomaly_prompts="smoke")
    w, _ = worker(batch_size=4)
    w.claim_step()
    pending = w.gather_step()
    assert {p.job.pk for p in pending} == {a.pk, b.pk} and len(pending) == 4
    w.score_step(pending)
    assert a.scores.count() == 2 and b.scores.count() == 2
    # Same frame content, different prompts: different scores.
    assert a.scores.first().score != b.scores.first().score
    w.shutdown()


@pytest.mark.slow
@pytest.mark.django_db
def test_it_opens_an_incident_with_a_thumbnail_and_closes_it_at_the_end(media, make_video):
    path = make_video("hot.avi", frames=80, fps=10.0, size=(960, 540))
    # A threshold this low makes every frame anomalous: the incident opens on the third.
    analysis = file_analysis(path, threshold=0.0001, incident_open_frames=3, localize=True)
    w, publisher = worker()
    w.run()
    incident = Incident.objects.get(analysis=analysis)
    assert incident.start_time_s == 0.0 and incident.end_time_s == pytest.approx(8.0)
    assert incident.peak_score == pytest.approx(analysis.scores.order_by("-score")[0].score)
    image = cv2.imread(incident.thumbnail.path)
    assert image is not None and image.shape[1] == 640
    assert analysis.scores.filter(box_x0__isnull=False).count() == 8
    assert [p["open"] for p in publisher.kinds("incident")] == [True, False]


@pytest.mark.django_db
def test_it_fails_a_broken_file_alone(media, make_video):
    # A real MP4 header with its index cut off: it passes the content check, then FFmpeg
    # cannot open it (the way a file damaged after upload breaks).
    data = make_video("broken.mp4").read_bytes()
    broken_path = media / "broken.mp4"
    broken_path.write_bytes(data[: data.rfind(b"moov") - 4])
    broken = file_analysis(broken_path)
    good = file_analysis(make_video("good.avi"))
    missing = file_analysis(make_video("gone.avi"))
    (media / "gone.avi").unlink()
    w, _ = worker()
    w.run()
    for a in (broken, good, missing):
        a.refresh_from_db()
    assert good.status == "completed"
    assert broken.status == "failed" and "cannot be opened as a video" in broken.error_message
    assert missing.status == "failed" and "does not exist" in missing.error_message


@pytest.mark.django_db
def test_it_fails_analyses_when_the_weights_are_missing(media, make_video, settings):
    settings.DETECTION_PRETRAINED = str(media / "missing.pt")
    analysis = file_analysis(make_video("a.avi"))
    w, _ = worker()
    w.run()
    analysis.refresh_from_db()
    assert analysis.status == "failed" and "checkpoint file not found" in analysis.error_message


@pytest.mark.django_db
def test_it_stops_writing_when_an_operator_stops_the_analysis(media, make_video):
    analysis = file_analysis(make_video("long.avi", frames=100))
    w, _ = worker(batch_size=2)
    w.claim_step()
    w.score_step(w.gather_step())
    Analysis.objects.filter(pk=analysis.pk).update(status="stopped", lease_owner="")
    # The very next store notices, before the heartbeat does, and writes nothing.
    w.score_step(w.gather_step())
    assert w.jobs == {}
    assert w.gather_step() == []
    analysis.refresh_from_db()
    assert analysis.status == "stopped" and analysis.scores.count() == 2


# --- Real processes -------------------------------------------------------------------


def complete_with_once(analysis: Analysis, env: dict[str, str]) -> None:
    """Run `run_detector --once`; the 600-frame clip at 5 of 10 fps ends complete, no gap."""
    done = manage("run_detector", "--once", env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    analysis.refresh_from_db()
    assert analysis.status == "completed"
    assert list(analysis.scores.values_list("frame_index", flat=True)) == expected_indices(
        600, 10.0, 5.0
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_finishes_the_batch_and_releases_the_lease_on_sigterm(media, make_video, subprocess_env):
    analysis = file_analysis(make_video("long.avi", frames=600, fps=10.0), sampling_fps=5.0)
    proc = start_worker({**subprocess_env, "DETECTION_BATCH_SIZE": "2"})
    try:
        wait_until(lambda: analysis.scores.count() >= 6, 60, "six stored scores", every=0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    analysis.refresh_from_db()
    assert (analysis.status, analysis.lease_owner) == ("queued", "")
    stored = list(analysis.scores.values_list("frame_index", flat=True))
    assert stored == expected_indices(600, 10.0, 5.0)[: len(stored)]  # a prefix, no gaps
    # A restart resumes and completes with exactly the uninterrupted result.
    complete_with_once(analysis, subprocess_env)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_resumes_without_duplicates_after_sigkill(media, make_video, subprocess_env):
    analysis = file_analysis(make_video("long.avi", frames=600, fps=10.0), sampling_fps=5.0)
    env = {**subprocess_env, "DETECTION_LEASE_SECONDS": "5", "DETECTION_BATCH_SIZE": "2"}
    proc = start_worker(env)
    try:
        wait_until(lambda: analysis.scores.count() >= 6, 60, "six stored scores", every=0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    analysis.refresh_from_db()
    assert analysis.status == "running"  # the lease outlives the dead worker...
    wait_until(
        lambda: Analysis.objects.get(pk=analysis.pk).lease_expires_at < timezone.now(),
        10,
        "the dead worker's lease to expire",
        every=0.1,
    )
    # ...until it expires and another worker takes over.
    complete_with_once(analysis, env)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_shares_a_queue_between_two_workers(media, make_video, subprocess_env):
    analyses = [file_analysis(make_video(f"q{i}.avi", frames=40)) for i in range(4)]
    procs = [start_worker(subprocess_env, "--once") for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for a in analyses:
        a.refresh_from_db()
        assert a.status == "completed"
        assert list(a.scores.values_list("frame_index", flat=True)) == [0, 10, 20, 30]
    # Each analysis was started by exactly one worker.
    starts = [line for out in outs for line in out.splitlines() if "): started by" in line]
    assert len(starts) == 4 and len({s.split(" (")[0] for s in starts}) == 4


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_serves_the_portal_and_a_worker_together_and_stops_both(
    media, make_video, subprocess_env
):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    analysis = file_analysis(make_video("served.avi", frames=30))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_portal", f"127.0.0.1:{port}"],
        env=subprocess_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            lambda: Analysis.objects.get(pk=analysis.pk).status == "completed",
            60,
            "the analysis to complete",
            every=0.1,
        )

        def login_page_served() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/") as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(login_page_served, 30, "the login page", every=0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "portal and worker stopped" in out
    assert not login_page_served()


@pytest.mark.django_db
def test_it_posts_incident_webhooks_without_blocking(media, make_video, settings):
    # The receiver is on loopback, which webhooks may reach only when the setting opens it.
    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = [ip_network("127.0.0.0/8")]
    import json as jsonlib
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(jsonlib.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        analysis = file_analysis(
            make_video("w.avi", frames=40),
            threshold=0.0001,
            incident_open_frames=2,
            webhook_url=url,
        )
        w, _ = worker()
        w.run()
        wait_until(lambda: len(received) == 2, 10, "two webhook deliveries", every=0.1)
    finally:
        server.shutdown()
    assert [r["event"] for r in received] == ["incident.opened", "incident.closed"]
    assert received[0]["analysis"]["id"] == analysis.pk
    assert received[1]["incident"]["end_time_s"] == pytest.approx(4.0)


def test_it_gives_up_on_an_unreachable_webhook_after_retries(caplog, settings):
    from detection.worker.webhooks import deliver

    settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS = [ip_network("127.0.0.0/8")]

    started = time.monotonic()
    assert deliver("http://127.0.0.1:9/nothing", {"x": 1}, retries=3, backoff_s=0.01) is False
    assert time.monotonic() - started < 5
    assert len([r for r in caplog.records if "webhook" in r.getMessage()]) == 3


@pytest.mark.django_db
def test_it_exits_at_once_on_a_second_signal(monkeypatch):
    exits = []
    monkeypatch.setattr("detection.worker.loop.os._exit", exits.append)
    w, _ = worker()
    w._on_signal(signal.SIGTERM, None)
    assert w.stopping and exits == []
    w._on_signal(signal.SIGINT, None)
    assert exits == [1]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("device", "reason"), [("cuda:7", "cuda:7"), ("tpu", "unknown device")])
def test_it_refuses_to_start_on_a_device_this_machine_lacks(
    media, make_video, subprocess_env, device, reason
):
    analysis = file_analysis(make_video("clip.avi", frames=5))
    done = manage("run_detector", "--once", "--device", device, env=subprocess_env)
    assert done.returncode == 2, done.stderr
    # (System check warnings of the test settings may come first.)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("CommandError: ") and reason in last, done.stderr
    assert "Traceback" not in done.stderr
    analysis.refresh_from_db()
    assert (analysis.status, analysis.lease_owner) == ("queued", "")  # left for a good worker
