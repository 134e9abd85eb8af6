"""The worker's periodic prune (detection/retention.py), in a thread of its own.

A prune of a day of scores takes minutes; in the loop's thread it would stop scoring for
that long. The thread has its own database connection (Django's are per thread) and its
small batches leave the loop's stores room in between. Every
DETECTION_PRUNE_INTERVAL_MINUTES each worker offers to prune; the shared lease lets one
worker of the deployment run, and `min_interval` makes the others skip when one did lately.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection

from detection import retention

log = logging.getLogger(__name__)

# The first offer comes this long after start (at most): a worker restarted more often than
# the interval still prunes, and short-lived test workers never do.
FIRST_DELAY_S = 300.0


class PeriodicPrune:
    def __init__(
        self,
        owner: str,
        *,
        interval_s: float | None = None,
        first_delay_s: float | None = None,
    ) -> None:
        self.owner = owner
        if interval_s is None:
            interval_s = 60.0 * settings.DETECTION_PRUNE_INTERVAL_MINUTES
        self.interval_s = interval_s
        first = min(interval_s, FIRST_DELAY_S) if first_delay_s is None else first_delay_s
        self._next_due = time.monotonic() + first
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.runs = 0  # prunes this worker actually ran (tests, logs)
        self.skipped = 0  # offers another worker's lease or recent prune turned down

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def step(self) -> bool:
        """Start a prune when one is due and none is under way; True if one started."""
        if self.interval_s <= 0 or self.running or self._stop.is_set():
            return False
        now = time.monotonic()
        if now < self._next_due:
            return False
        self._next_due = now + self.interval_s
        self._thread = threading.Thread(target=self._run, name="prune", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        try:
            retention.prune(
                owner=self.owner,
                # A little slack: workers offering on the same period must not all skip.
                min_interval=timedelta(seconds=self.interval_s * 0.9),
                should_stop=self._stop.is_set,
            )
            self.runs += 1
        except retention.PruneBusy as exc:
            self.skipped += 1
            log.debug("prune skipped: %s", exc)
        except Exception:
            # A failed prune must never take the worker down; the next offer retries.
            log.exception("prune failed; retrying in %.0f s", self.interval_s)
        finally:
            connection.close()  # this thread's own connection

    def stop(self, timeout: float = 30.0) -> None:
        """Ask a prune under way to stop after its batch, and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
