"""Several workers on one PostgreSQL queue: every analysis is claimed once and completes.

Runs only where TEST_POSTGRES_URL is set (.ci/run sets it, so CI never skips it). Everything
runs in subprocesses against that database, as a deployment would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.processes import python
from tests.support.services import NO_POSTGRES_URL, POSTGRES_URL

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES_URL),
]

SEED = """
import json, sys
from cameras.models import Camera
from detection.models import Analysis
ids = []
for path in sys.argv[1:]:
    cam = Camera.objects.create(name=path, kind="file", source=path)
    ids.append(Analysis.objects.create(camera=cam, name=path, normal_prompts="a street",
                                       anomaly_prompts="a fire", status="queued").pk)
print(json.dumps(ids))
"""

REPORT = """
import json
from detection.models import Analysis
print(json.dumps({a.pk: [a.status, list(a.scores.values_list("frame_index", flat=True))]
                  for a in Analysis.objects.all()}))
"""


@pytest.mark.parametrize("workers", [2, 4])
def test_it_claims_each_analysis_once_with_several_workers(
    workers, tmp_path, make_video, tiny_model
):
    env = {
        **tiny_model.env,
        "DATABASE_URL": POSTGRES_URL,
        "DETECTION_VIDEO_DIRS": str(tmp_path),
        "MEDIA_ROOT": str(tmp_path / "media"),
        "DJANGO_LOG_LEVEL": "INFO",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    for step in (["migrate", "--noinput"], ["flush", "--noinput"]):
        done = subprocess.run(
            [*manage, *step], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
    clips = [str(make_video(f"pg{i}.avi", frames=30)) for i in range(6)]
    ids = json.loads(python(env, SEED, *clips))
    procs = [
        subprocess.Popen(
            [*manage, "run_detector", "--once", "--poll", "0.2"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(workers)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, outs
    report = json.loads(python(env, REPORT))
    assert sorted(int(k) for k in report) == sorted(ids)
    for status, frames in report.values():
        assert status == "completed" and frames == [0, 10, 20]
    starts = [line for out in outs for line in out.splitlines() if "): started by" in line]
    assert len(starts) == len(ids)  # nobody started an analysis twice
    subprocess.run([*manage, "flush", "--noinput"], env=env, cwd=ROOT, timeout=120)
