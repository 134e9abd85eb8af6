"""The detection worker (`manage.py run_detector`): the loop and its step methods (`loop`),
claims and leases (`leases`), storing scores and incidents (`recording`), webhooks."""

from __future__ import annotations

from detection.worker.loop import Worker

__all__ = ["Worker"]
