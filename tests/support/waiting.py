"""Waiting for a condition: the one polling helper, for plain and for async code.

    wait_until(lambda: analysis.scores.count() >= 6, 60, "six stored scores")
    state = await wait_until_async(page.snapshot, 15, "the first snapshot", detail=page.describe)

`condition` is called at once and then every `every` seconds (cheap, synchronous calls);
its first truthy value is returned. After `timeout` seconds it fails with `WaitTimeout`, an
AssertionError that names `what` and adds `detail()`, so a failed wait reads like a failed
assertion. Code that only waits *at most* that long catches `WaitTimeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time."""


class _Poll:
    """One check of a condition, failing with WaitTimeout once its time is up."""

    def __init__(
        self,
        condition: Callable[[], T],
        timeout: float,
        what: str,
        detail: Callable[[], str] | None,
    ) -> None:
        self.condition, self.timeout, self.what, self.detail = condition, timeout, what, detail
        self.end = time.monotonic() + timeout

    def __call__(self) -> T | None:
        value = self.condition()
        if value:
            return value
        if time.monotonic() > self.end:
            message = f"timed out after {self.timeout} s waiting for {self.what}"
            if self.detail is not None:
                message += f". {self.detail()}"
            raise WaitTimeout(message)
        return None


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    *,
    every: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy; return that value."""
    poll = _Poll(condition, timeout, what, detail)
    while not (value := poll()):
        time.sleep(every)
    return value


async def wait_until_async(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    *,
    every: float = 0.05,
) -> T:
    """`wait_until` for a coroutine: sleeps with asyncio, so the event loop keeps running."""
    poll = _Poll(condition, timeout, what, detail)
    while not (value := poll()):
        await asyncio.sleep(every)
    return value
