"""Stopping the benchmarks' child processes, one way for all of them.

`stop` takes what `subprocess.Popen` starts (bench/viewers.py: the daphnes, the worker,
the viewer clients, nginx) and what `multiprocessing` starts (bench/ring.py's producers).
Django-free, like bench/ring.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable
from multiprocessing.process import BaseProcess

Child = subprocess.Popen | BaseProcess


def stop(
    children: Iterable[Child],
    *,
    timeout: float,
    kill_timeout: float,
    sig: int = signal.SIGTERM,
) -> None:
    """Stop `children`: `sig` to each one still running, then each one is waited for up to
    `timeout` s, and one still running then gets SIGKILL and up to `kill_timeout` s more.

    Every child gets its signal before the first wait, so several stop side by side.
    """
    children = list(children)
    for child in children:
        if _running(child):
            _signal(child, sig)
    for child in children:
        if not _ended(child, timeout):
            child.kill()
            _ended(child, kill_timeout)


def _running(child: Child) -> bool:
    if isinstance(child, subprocess.Popen):
        return child.poll() is None
    return child.is_alive()


def _signal(child: Child, sig: int) -> None:
    if isinstance(child, subprocess.Popen):
        child.send_signal(sig)
    elif sig == signal.SIGTERM:
        child.terminate()
    else:
        os.kill(child.pid, sig)  # type: ignore[arg-type]  # a started process has a pid


def _ended(child: Child, timeout: float) -> bool:
    """Waits up to `timeout` s for `child`; whether it has ended."""
    if isinstance(child, subprocess.Popen):
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    child.join(timeout=timeout)
    return not child.is_alive()
