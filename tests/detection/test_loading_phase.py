"""The worker's first model load, as an operator sees it (issue 14, items 10 and 12):
"loading model" while it loads, one failure message per analysis when the weights cannot
be had, and the hub's retry warnings printed once, not twice."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from detection.models import Analysis
from detection.worker.loop import Worker
from tests.support.processes import start_worker, stop
from tests.support.waiting import wait_until
from tests.support.worker import RecordingPublisher, file_analysis

LOADING = "loading model"
REAL_WEIGHTS = {"DETECTION_MODEL": "ViT-B-16", "DETECTION_PRETRAINED": "laion2b_s34b_b88k"}


class PhaseRecorder(RecordingPublisher):
    """Records each status message with the phase the database held when it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.stored_phase: list[tuple[int, str | None, str | None]] = []

    def publish(self, analysis_id: int, kind: str, payload: dict) -> None:
        super().publish(analysis_id, kind, payload)
        if kind == "status" and "phase" in payload:
            metadata = Analysis.objects.get(pk=analysis_id).metadata
            self.stored_phase.append((analysis_id, payload["phase"], metadata.get("phase")))


@pytest.mark.django_db
def test_it_shows_loading_model_while_the_first_load_runs_then_clears_it(
    tiny_settings, media, make_video
):
    first = file_analysis(make_video("a.avi"))
    second = file_analysis(make_video("b.avi"))
    publisher = PhaseRecorder()
    worker = Worker(publisher=publisher, poll_seconds=0.05, once=True)

    assert worker.claim_step() is True

    # Both claimed analyses say so before the load and stop saying it after, in the
    # database (what a page rendered meanwhile shows) as in the message.
    for pk in (first.pk, second.pk):
        assert [(p, s) for a, p, s in publisher.stored_phase if a == pk] == [
            (LOADING, LOADING),
            ("", ""),
        ]
        statuses = [p for a, k, p in publisher.messages if a == pk and k == "status"]
        assert statuses[0] == {"status": "running", "phase": LOADING}
        assert statuses[-1] == {"status": "running"}  # started: scoring comes next
    assert set(worker.jobs) == {first.pk, second.pk}

    # The model stays loaded: the next analysis starts without a loading phase.
    third = file_analysis(make_video("c.avi"))
    publisher.messages.clear()
    assert worker.claim_step() is True
    assert [p for a, k, p in publisher.messages if a == third.pk] == [{"status": "running"}]
    worker.shutdown()


# --- a real worker against a hub that is slow, or not there ------------------------------


class SlowHub(BaseHTTPRequestHandler):
    """A Hugging Face endpoint that takes `delay` seconds to say it has no such file."""

    delay = 4.0

    def do_HEAD(self) -> None:
        time.sleep(self.delay)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Output:
    """A process's output, read line by line in a thread so the test can wait on it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def __str__(self) -> str:
        return "\n".join(self.lines[-40:])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_shows_loading_model_in_a_real_worker_until_the_download_fails(
    media, make_video, subprocess_env, slow_hub, tmp_path
):
    analysis = file_analysis(make_video("a.avi"))
    env = {
        **subprocess_env,
        **REAL_WEIGHTS,
        "HF_ENDPOINT": slow_hub,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "0",
        # Shorter than the load (two requests held 4 s each): the lease must be renewed
        # while the model loads, or another worker could take the analysis over.
        "DETECTION_LEASE_SECONDS": "5",
    }
    process = start_worker(env, "--once")
    output = Output(process)
    loading_seen: list[float] = []

    def loading() -> bool:
        row = Analysis.objects.get(pk=analysis.pk)
        if row.metadata.get("phase") != LOADING:
            return False
        assert row.lease_expires_at > timezone.now(), "the lease lapsed while loading"
        loading_seen.append(time.monotonic())
        return loading_seen[-1] - loading_seen[0] >= 5.5

    try:
        # The hub holds each request 4 s: the page has time to show what is going on.
        wait_until(
            loading,
            60,
            "'loading model' stored, under a live lease, while the weights download",
            detail=lambda: str(output),
            every=0.2,
        )
        wait_until(
            lambda: Analysis.objects.get(pk=analysis.pk).status == "failed",
            60,
            "the analysis to fail once the hub has said no",
            detail=lambda: str(output),
            every=0.1,
        )
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)
    analysis.refresh_from_db()
    assert analysis.metadata["phase"] == ""
    assert "could not download the 'laion2b_s34b_b88k' weights" in analysis.error_message
    assert "DETECTION_PRETRAINED=/path/to/open_clip_pytorch_model.bin" in analysis.error_message
    assert "Traceback" not in str(output)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_prints_each_hub_retry_warning_of_a_real_worker_once(
    media, make_video, subprocess_env, tmp_path
):
    file_analysis(make_video("a.avi"))
    env = {
        **subprocess_env,
        **REAL_WEIGHTS,
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "0",
    }
    process = start_worker(env, "--once")
    output = Output(process)
    try:
        # Connection refused: the hub retries after 1 s, 2 s, 4 s... Two retries announced
        # are enough to count the first announcement; the rest would take ~45 s.
        wait_until(
            lambda: output.count("[Retry 2/5]"),
            90,
            "the hub's second retry",
            detail=lambda: str(output),
            every=0.1,
        )
    finally:
        process.kill()  # the load would go on retrying; nothing of it is kept
        process.wait(timeout=15)
    assert output.count("Retrying in 1s [Retry 1/5]") == 1, str(output)
    # Once, through the project's log format (time, level, logger), not raw on stderr.
    [line] = [line for line in output.lines if "Retrying in 1s" in line]
    assert " WARNING huggingface_hub." in line
