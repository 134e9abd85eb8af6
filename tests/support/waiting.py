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


def _timed_out(what: str, timeout: float, detail: Callable[[], str] | None) -> WaitTimeout:
    message = f"timed out after {timeout} s waiting for {what}"
    if detail is not None:
        message += f". {detail()}"
    return WaitTimeout(message)


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    *,
    every: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy; return that value."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise _timed_out(what, timeout, detail)
        time.sleep(every)


async def wait_until_async(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    *,
    every: float = 0.05,
) -> T:
    """`wait_until` for a coroutine: sleeps with asyncio, so the event loop keeps running."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise _timed_out(what, timeout, detail)
        await asyncio.sleep(every)
