"""The project's own processes in tests, as an operator starts them: manage.py, daphne,
run_detector; stopping what a test started; what /proc says about a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from tests.support import ROOT

ASGI_APP = "portal.asgi:application"
# Variables the settings read; the parent's values must not leak into a subprocess that is
# given its own (`{k: v for k, v in os.environ.items() if not k.startswith(...)}`).
SETTINGS_PREFIXES = (
    "DJANGO_",
    "DETECTION_",
    "DATABASE_URL",
    "REDIS_URL",
    "MEDIA_ROOT",
    "CHANNELS_",
)


def manage(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `python manage.py ARGS` in a subprocess, as an operator would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def python(env: dict[str, str], code: str, *args: str) -> str:
    """Run `code` after `django.setup()` in a subprocess (`sys.argv[1:]` = `args`); the last
    line it printed."""
    script = f"import django, sys; sys.argv=['x', *{list(args)!r}]; django.setup()\n{code}"
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


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


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`manage.py run_detector --poll 0.2 ARGS`; its output (text) on the process's stdout."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_detector", "--poll", "0.2", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a process's log, for a failure message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
