"""Scores from a real `run_detector` reach a websocket on a real daphne, across processes.

Once through the embedded SQLite layer and once through Redis (TEST_REDIS_URL, set by
.ci/run). The client logs in with a real session cookie, as a browser would.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys

import pytest

from detection.models import Analysis, FrameScore
from tests.support import ROOT
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory
from tests.support.live import watch
from tests.support.processes import migrate_channels, start_daphne
from tests.support.services import NO_REDIS_URL, REDIS_URL
from tests.support.sessions import session_cookie
from tests.support.streams import free_port, wait_for_port

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("tiny_settings"),
    pytest.mark.slow,
]


def run_live(tmp_path, make_video, subprocess_env, layer_env: dict[str, str]):
    env = {**subprocess_env, **layer_env}
    migrate_channels(env)
    viewer = UserFactory(username="watcher")
    cookie = session_cookie(viewer)
    clip = make_video("live.avi", frames=300, fps=10.0)
    camera = CameraFactory(kind="file", source=str(clip), viewers=[viewer])
    analysis = AnalysisFactory(camera=camera, status="queued", sampling_fps=5.0)
    port = free_port()
    server = start_daphne(env, port, tmp_path / "daphne.log")
    worker = None
    try:
        wait_for_port(port)

        async def scenario():
            nonlocal worker
            url = f"ws://127.0.0.1:{port}/ws/analyses/{analysis.pk}/"
            task = asyncio.create_task(
                watch(url, cookie, f"http://127.0.0.1:{port}", lambda s: len(s) >= 150)
            )
            await asyncio.sleep(1.5)  # connected and subscribed before the first score
            worker = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "run_detector",
                    "--once",
                    "--poll",
                    "0.2",
                    "--batch-size",
                    "4",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return await task

        scores, latencies = asyncio.run(scenario())
    finally:
        server.terminate()
        if worker is not None:
            worker.wait(timeout=60)
        server.wait(timeout=10)
    stored = list(
        FrameScore.objects.filter(analysis=analysis)
        .order_by("frame_index")
        .values_list("frame_index", "score")
    )
    final = Analysis.objects.get(pk=analysis.pk)
    assert final.status == "completed", final.error_message
    assert len(stored) == 150
    # Every stored score reached the page, with the stored value: live or by resync.
    assert [(i, pytest.approx(scores[i]["score"])) for i, _ in stored] == stored
    assert latencies, "no score arrived live (everything came from the snapshot)"
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) >= 20 else max(latencies)
    print(
        f"\nscore-to-socket latency over {len(latencies)} scores: "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
    )
    return p50, p95


def test_it_carries_scores_across_processes_through_the_embedded_layer(
    tmp_path, make_video, subprocess_env
):
    p50, _ = run_live(
        tmp_path,
        make_video,
        subprocess_env,
        {"CHANNELS_LAYER": "sqlite", "CHANNELS_DB_PATH": str(tmp_path / "channels.sqlite3")},
    )
    assert p50 < 1.0


@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason=NO_REDIS_URL)
def test_it_carries_scores_across_processes_through_redis(tmp_path, make_video, subprocess_env):
    p50, _ = run_live(
        tmp_path, make_video, subprocess_env, {"CHANNELS_LAYER": "redis", "REDIS_URL": REDIS_URL}
    )
    assert p50 < 1.0
