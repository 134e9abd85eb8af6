"""Publishing what the worker stores to live pages, through the channel layer.

Best effort by design: the database is the record, and a page that reconnects asks for
what it missed. So a publishing failure (no layer, Redis down, a full channel) is logged,
rate-limited, and never stops scoring or storing. Each send is bounded by a timeout (a
hung Redis must not hang the worker), and after a failure the publisher drops messages
without trying for a while (doubling up to MAX_RETRY_AFTER), so a dead layer costs the
worker one failed attempt per pause rather than one per score.

Plain synchronous code on the main thread (the worker) publishes through one event loop of
its own, in a daemon thread, so the layer's connection pool lives on: `async_to_sync` would
start a new loop, a new thread and, with channels_redis, a new Redis connection for every
message (milliseconds each, and a socket left in TIME_WAIT per message). The worker does not
wait for the sends either: `publish` queues the message (microseconds) and one task of that
loop sends the queue in order, so a send (0.3 ms on Redis, 1.6 ms on the embedded layer, a
timeout on a hung Redis) is never paid by the loop that feeds the model. The queue is
bounded (MAX_QUEUED): beyond it messages are dropped and counted, like sends that failed.
`flush()` waits for the queue, as the worker does when it stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from detection.metrics import PUBLISH_DROPPED

log = logging.getLogger(__name__)


def group_name(analysis_id: int) -> str:
    return f"analysis-{analysis_id}"


class Publisher(Protocol):
    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (at most `timeout` s) for what was published; False when time ran out."""
        ...


class NullPublisher:
    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None:
        return None

    def flush(self, timeout: float = 5.0) -> bool:
        return True  # nothing is ever queued


class _PublishingLoop:
    """An event loop in a daemon thread, one per process, for publishing from sync code."""

    _current: _PublishingLoop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self.loop.run_forever, name="live-publisher", daemon=True)
        thread.start()

    @classmethod
    def get(cls) -> _PublishingLoop:
        with cls._lock:
            if cls._current is None or cls._current.pid != os.getpid():  # a forked child
                cls._current = cls()
            return cls._current

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


def _own_loop_fits(layer: Any) -> bool:
    """Whether to publish through _PublishingLoop rather than `async_to_sync`.

    Only on the main thread of a process with no event loop there (elsewhere, as in a view
    run by `sync_to_async`, `async_to_sync` reuses the server's loop), and not with the
    in-memory layer, whose queues belong to the loop of the consumers that read them.
    """
    from channels.layers import InMemoryChannelLayer

    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return not isinstance(layer, InMemoryChannelLayer)
    return False


class ChannelPublisher:
    """Sends `{"type": "analysis.<kind>", ...}` to the analysis's group.

    The message type maps to the consumer's `analysis_<kind>` handler (Channels replaces
    the dot with an underscore).
    """

    # One send; a healthy layer answers in milliseconds. With the pauses below, a hung
    # Redis holds the sending task at most TIMEOUT in every MAX_RETRY_AFTER (a dead one,
    # whose port refuses connections, only milliseconds), and publishing resumes at most
    # MAX_RETRY_AFTER after the layer is back.
    TIMEOUT = 1.0
    RETRY_AFTER = 0.5  # the first pause after a failure; doubled after each further one
    MAX_RETRY_AFTER = 4.0
    LOG_EVERY = 30.0
    MAX_QUEUED = 2000  # messages waiting for the sending task (a few seconds of 64 cameras)

    def __init__(self) -> None:
        self._last_error_log = 0.0
        self._failures = 0  # consecutive failed sends
        self._down_since = 0.0
        self._paused_until = 0.0
        self._dropped = 0  # messages not sent since the layer failed
        # Messages for the sending task, in order, and whether that task runs (both shared
        # by the caller's thread and the publishing loop's; deque appends and pops are
        # atomic, and the flag is only set under the lock).
        self._queue: deque[tuple[Any, str, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._sending = False

    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        now = time.monotonic()
        if now < self._paused_until:
            self._drop()
            return
        try:
            layer = get_channel_layer()
            if layer is None:
                return
            message = {"type": f"analysis.{kind}", **payload}
            group = group_name(analysis_id)
            if _own_loop_fits(layer):
                self._enqueue(layer, group, message)
                return
            async_to_sync(self._send)(layer, group, message)
        except Exception as exc:  # noqa: BLE001 - best effort: never stop the worker
            self._failed(exc, time.monotonic())
        else:
            self._succeeded()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (at most `timeout` s) until every queued message was sent or dropped."""
        end = time.monotonic() + timeout
        while self._queue or self._sending:
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)
        return True

    def _enqueue(self, layer: Any, group: str, message: dict[str, Any]) -> None:
        if len(self._queue) >= self.MAX_QUEUED:
            self._drop()
            return
        self._queue.append((layer, group, message))
        with self._lock:
            if self._sending:
                return
            self._sending = True
        publishing = _PublishingLoop.get()
        publishing.loop.call_soon_threadsafe(publishing.loop.create_task, self._drain())

    async def _drain(self) -> None:
        """The sending task: the queue, in order, until it is empty."""
        try:
            while True:
                while self._queue:
                    layer, group, message = self._queue.popleft()
                    if time.monotonic() < self._paused_until:
                        self._drop()
                        continue
                    try:
                        await self._send(layer, group, message)
                    except Exception as exc:  # noqa: BLE001 - best effort, as publish()
                        self._failed(exc, time.monotonic())
                    else:
                        self._succeeded()
                with self._lock:
                    if not self._queue:  # else a message came in after the last pop: go on
                        self._sending = False
                        return
        except BaseException:
            with self._lock:  # the next publish starts a new task
                self._sending = False
            raise

    def _drop(self) -> None:
        self._dropped += 1
        PUBLISH_DROPPED.inc()

    def _succeeded(self) -> None:
        if self._failures:
            log.warning(
                "publishing to live pages resumed after %.1f s; %d messages were not "
                "published (pages fetch them from the database)",
                time.monotonic() - self._down_since,
                self._dropped,
            )
            self._failures = self._dropped = 0

    async def _send(self, layer: Any, group: str, message: dict[str, Any]) -> None:
        await asyncio.wait_for(layer.group_send(group, message), self.TIMEOUT)

    def _failed(self, exc: BaseException, now: float) -> None:
        if not self._failures:
            self._down_since = now
        self._failures += 1
        self._dropped += 1
        PUBLISH_DROPPED.inc()
        pause = min(self.MAX_RETRY_AFTER, self.RETRY_AFTER * 2 ** (self._failures - 1))
        self._paused_until = now + pause
        if now - self._last_error_log > self.LOG_EVERY:
            self._last_error_log = now
            log.warning(
                "publishing to live pages failed (scores are stored; retrying in %.1f s): %s",
                pause,
                exc if str(exc) else type(exc).__name__,
            )
