"""The project's own processes in tests, as an operator starts them: daphne, manage.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from tests.conftest import ROOT, manage

ASGI_APP = "portal.asgi:application"


def start_daphne(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """daphne on 127.0.0.1:`port`, its stdout and stderr appended to `log`."""
    with log.open("a") as out:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), ASGI_APP],
            env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal a process we started (then kill it if it lingers) and reap it."""
    if process is None or process.poll() is not None:
        return
    if process.stdin:
        with suppress(OSError):
            process.stdin.close()
    with suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a stopped process cannot act on a signal
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def migrate_channels(env: dict[str, str]) -> None:
    """Create the embedded layer's tables, when `env` selects that layer."""
    if env.get("CHANNELS_LAYER") != "sqlite":
        return
    done = manage("migrate_channels", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
