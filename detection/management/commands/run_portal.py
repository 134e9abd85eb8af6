"""`manage.py run_portal`: the web server and one detection worker, stopped together.

What `make run` uses on one machine. Each child runs in its own session so a Ctrl-C in the
terminal reaches only this supervisor, which then sends each child exactly one SIGTERM:
the worker finishes its batch and releases its leases, the server closes. If either child
exits on its own, the other is stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

STOP_TIMEOUT_S = 15


class Command(BaseCommand):
    help = "Serve the portal and run one detection worker; Ctrl-C stops both."
    # The web server child says the system checks: daphne's runserver runs them whatever
    # --skip-checks says, so checking here too printed every warning twice.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--no-worker", action="store_true", help="serve the portal only")

    def handle(self, *args: Any, **options: Any) -> None:
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        # The server says the system checks once (daphne's runserver ignores --skip-checks);
        # the worker skips them.
        commands = [[*manage, "runserver", options["addrport"]]]
        if not options["no_worker"]:
            commands.append([*manage, "run_detector", "--skip-checks"])
        children = [subprocess.Popen(c, start_new_session=True) for c in commands]
        stopping = False

        def stop(_signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        for child in children:
            if child.poll() is None:
                # The whole group: runserver's autoreloader runs the server in a grandchild.
                os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        self.stdout.write("portal and worker stopped")
