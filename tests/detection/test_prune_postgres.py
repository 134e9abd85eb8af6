"""`manage.py prune` on PostgreSQL: two prunes started together (one runs, the other is
turned away), rollups exact, while another process keeps storing live scores.

Runs only where TEST_POSTGRES_URL is set (.ci/run sets it). Everything runs in
subprocesses against that database, as a deployment would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.processes import manage, python
from tests.support.services import NO_POSTGRES_URL, POSTGRES_URL

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES_URL),
]

ROWS = 20_000

SEED = """
import json, sys
from datetime import timedelta
from django.utils import timezone
from cameras.models import Camera
from detection.models import Analysis, FrameScore
rows = int(sys.argv[1])
ids = []
base = timezone.now() - timedelta(days=40)
for n in range(2):
    cam = Camera.objects.create(name=f"cam{n}", kind="stream", source=f"rtsp://10.0.0.{n}/s")
    a = Analysis.objects.create(camera=cam, name=f"a{n}", normal_prompts="a street",
                                anomaly_prompts="a fire", status="running", threshold=0.6)
    ids.append(a.pk)
    FrameScore.objects.bulk_create(
        (FrameScore(analysis=a, frame_index=i, time_s=float(i), score=(i * 7 % 10) / 10,
                    captured_at=base + timedelta(seconds=i), normal_similarity=0.2,
                    anomaly_similarity=0.1) for i in range(rows // 2)),
        batch_size=5000,
    )
print(json.dumps(ids))
"""

# A stand-in for the worker's live path: one short transaction per stored batch (as
# Recorder.store), timed; prints the longest store once told to stop (stdin closes).
WRITER = """
import json, sys, threading, time
from django.db import transaction
from django.utils import timezone
from detection.models import Analysis, FrameScore
a = Analysis.objects.get(pk=int(sys.argv[1]))
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
longest, stores, i = 0.0, 0, 10_000_000
print("ready", flush=True)
while not stop.is_set():
    started = time.monotonic()
    with transaction.atomic():
        FrameScore.objects.bulk_create([FrameScore(analysis=a, frame_index=i + k,
            time_s=float(i + k), captured_at=timezone.now(), score=0.5,
            normal_similarity=0.2, anomaly_similarity=0.1) for k in range(4)])
        Analysis.objects.filter(pk=a.pk).update(last_frame_index=i + 3)
    longest = max(longest, time.monotonic() - started)
    stores += 1
    i += 4
    time.sleep(0.05)
print(json.dumps({"longest": longest, "stores": stores}))
"""

REPORT = """
import json
import os
from django.db.models import Sum, Min, Max, Count
from detection.models import FrameScore, ScoreRollup
print(json.dumps({
    "raw_old": FrameScore.objects.filter(frame_index__lt=10_000_000).count(),
    "raw_live": FrameScore.objects.filter(frame_index__gte=10_000_000).count(),
    "rollups": ScoreRollup.objects.aggregate(n=Count("id"), frames=Sum("count"),
        above=Sum("above"), low=Min("min_score"), high=Max("max_score")),
    "minute0": list(ScoreRollup.objects.filter(minute=0).values_list("count", "above")),
}))
"""


def test_it_prunes_once_exactly_while_scores_keep_being_stored(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": POSTGRES_URL,
        "MEDIA_ROOT": str(tmp_path / "media"),
        "DETECTION_PRETRAINED": "none",
        "DJANGO_LOG_LEVEL": "WARNING",
        "DETECTION_RETENTION_DAYS": "30",
    }
    for step in (["migrate", "--noinput"], ["flush", "--noinput"]):
        done = manage(*step, env=env, timeout=180)
        assert done.returncode == 0, done.stderr
    ids = json.loads(python(env, SEED, str(ROWS)))
    script = f"import django, sys; sys.argv=['x', '{ids[0]}']; django.setup()\n{WRITER}"
    writer = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        command = [sys.executable, str(ROOT / "manage.py"), "prune", "--batch-size", "1000"]
        prunes = [
            subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [(p.wait(timeout=300), *p.communicate()) for p in prunes]
    finally:
        out, err = writer.communicate(input="", timeout=60)
    assert writer.returncode == 0, err
    written = json.loads(out.strip().splitlines()[-1])
    codes = sorted(code for code, _, _ in results)
    # Either the second found the lease taken (exit 1, nothing done), or it started after
    # the first finished and found nothing old left.
    assert codes in ([0, 1], [0, 0]), results
    done = [o for code, o, _ in results if code == 0]
    assert any(f"Raw scores: {ROWS:,} of 2 analyses were rolled up" in o for o in done), results
    for code, _, err in results:
        if code == 1:
            assert "another prune is running" in err
    report = json.loads(python(env, REPORT))
    assert report["raw_old"] == 0
    assert report["raw_live"] == 4 * written["stores"]  # the live path lost nothing
    rollups = report["rollups"]
    assert rollups["frames"] == ROWS  # nothing counted twice
    assert rollups["n"] == 2 * -(-(ROWS // 2) // 60)
    assert (rollups["low"], rollups["high"]) == (0.0, 0.9)
    above_per_analysis = sum(1 for i in range(ROWS // 2) if (i * 7 % 10) / 10 >= 0.6)
    assert rollups["above"] == 2 * above_per_analysis
    assert report["minute0"] == [[60, 24], [60, 24]]
    # Stores went on during the prune: none waited anywhere near a lock timeout.
    assert written["stores"] > 0 and written["longest"] < 5.0, written
