"""`bench.processes.stop` (bench/processes.py): the benchmarks' one way to stop children."""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import time

from bench.processes import stop


def _ignoring_sigterm() -> subprocess.Popen:
    """A child that ignores SIGTERM, once it has said so."""
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_it_signals_every_child_first_and_kills_one_that_outlasts_its_timeout():
    stubborn = _ignoring_sigterm()
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    stop([stubborn, polite], timeout=0.5, kill_timeout=5)
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM  # signalled before the stubborn one's wait
    assert time.monotonic() - started < 5


def test_it_sends_the_signal_asked_for_and_leaves_an_ended_child_alone():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop([ended, sleeper], sig=signal.SIGUSR1, timeout=10, kill_timeout=5)
    assert ended.returncode == 0 and sleeper.returncode == -signal.SIGUSR1


def _sleep_as_a_fresh_process_would(ready) -> None:
    # A forked child inherits the test process's Python signal handlers (a test before this
    # one may have installed a worker's SIGTERM handler): SIGTERM must end it, as it ends
    # bench/ring.py's producers, which restore the default the same way.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ready.set()
    time.sleep(60)


def test_it_stops_multiprocessing_children_too():
    context = mp.get_context("fork")
    ready = context.Event()
    process = context.Process(target=_sleep_as_a_fresh_process_would, args=(ready,), daemon=True)
    process.start()
    assert ready.wait(10)
    stop([process], timeout=10, kill_timeout=5)
    assert not process.is_alive() and process.exitcode == -signal.SIGTERM
