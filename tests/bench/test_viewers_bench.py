"""`python -m bench.viewers` (bench/viewers.py) at 5 viewers: two daphnes behind the nginx
site, the embedded layer, a few seconds of watching.

Only that it runs end to end and reports every field; the numbers are the benchmark's job
(docs/performance.md, "1,000 viewers"). The 200-viewer test (tests/live/test_live_load.py)
runs the same clients in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from bench.viewers import nginx_site
from tests.support import ROOT


def test_it_writes_an_upstream_of_several_daphnes_into_the_documented_site(tmp_path):
    site = nginx_site([8101, 8102], 9443, tmp_path / "cert.pem", tmp_path / "key.pem")

    assert "server 127.0.0.1:8101;\n    server 127.0.0.1:8102;" in site
    assert "listen 127.0.0.1:9443 ssl http2;" in site
    assert f"ssl_certificate {tmp_path / 'cert.pem'};" in site
    assert "return 301" not in site  # the plain-http redirect server is left out
    assert "proxy_set_header Upgrade $http_upgrade;" in site


@pytest.mark.slow
def test_it_measures_five_viewers_with_two_sockets_each(tmp_path):
    nginx = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if nginx is None or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are needed (apt-get install nginx openssl)")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.viewers", "--viewers", "5", "--daphnes", "2"),
            *("--layer", "embedded", "--window-s", "4", "--catch-up-s", "15"),
            *("--clients", "1", "--ramp-s", "1", "--keep", str(tmp_path / "run")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: over the latency target
    document, summary = done.stdout.rstrip().rsplit("\n", 1)
    report = json.loads(document)
    assert summary.startswith("5 viewers (10 sockets), 2 daphne(s), embedded layer:")
    assert report["sockets"] == 10 and report["sockets_failed"] == 0
    assert report["viewers_holding_every_score"] == 5
    assert report["scores_stored_by_window_end"] >= 1
    assert set(report["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(report["cpu_percent"]) == {"daphne", "worker", "nginx", "clients"}
    assert report["rss_mib_end"]["daphne"] > 0 and "daphne_rss_kib_per_viewer" in report
    assert all(report["processes_alive"].values())
