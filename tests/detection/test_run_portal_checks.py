"""`make run` (manage.py run_portal) says each system check message once (issue 14, item 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.processes import SETTINGS_PREFIXES
from tests.support.streams import free_port, wait_for_port


@pytest.mark.slow
def test_it_says_each_check_message_once_under_run_portal(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        MEDIA_ROOT=str(tmp_path / "media"),
        CHANNELS_DB_PATH=str(tmp_path / "channels.sqlite3"),
        DETECTION_PRETRAINED="none",  # detection.W001, from every process that checks
    )
    port = free_port()
    out = (tmp_path / "out.txt").open("w")
    portal = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_portal", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=120)
    finally:
        portal.send_signal(signal.SIGINT)
        portal.wait(timeout=30)
    output = (tmp_path / "out.txt").read_text()
    assert output.count("detection.W001") == 1, output
