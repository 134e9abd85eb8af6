"""The detection worker (`manage.py run_detector`): the loop and its step methods (`loop`),
claims and leases (`leases`), storing scores and incidents (`recording`), webhooks.

`Worker` loads on first use (PEP 562): web processes import light modules of this package
(`preview`'s paths and clean-up) and must not pull in the loop, and with it torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detection.worker.loop import Worker

__all__ = ["Worker"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from detection.worker.loop import Worker

        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
