"""The live analysis socket: `/ws/analyses/<id>/`.

Read-only. On connect it checks the user (the same rule as the pages), joins the analysis's
group, then sends a snapshot from the database; afterwards it relays what the worker
publishes. The database is the record and the layer is best effort: a client that missed
messages (it sees a score whose `previous` is not the last index it holds, or it
reconnects) asks for what it missed with `after` and receives exactly that.

Fan-out: a process subscribes once per analysis (_Hub: one channel of its own in the
group) and relays each message to every local socket of it, so the worker sends one message
per process rather than per socket, and the JSON text is encoded once. The hub sends to a
socket itself when nothing is before the message (the usual case); otherwise the message
waits in the socket's inbox, behind what is there, for the socket's own task.

Faults: when the channel layer (Redis) or the database fails under an open socket, the
socket is closed with CLOSE_UNAVAILABLE, so the page reconnects once they are back rather
than sitting on a dead subscription. Every RECHECK_SECONDS the socket also rejoins its group
(a restarted Redis has forgotten it) and compares the database with what it relayed: scores
or a status stored a whole period ago and never relayed (dropped by an overflowing layer at
the end of a run, when no later score would reveal the gap) are announced then. The same
re-check closes the socket (4403) once its session no longer authenticates its user, the
way `django.contrib.auth.get_user` decides: logged out, user deleted or deactivated,
password changed (the session's auth hash, SECRET_KEY_FALLBACKS included), or access to
the analysis revoked. The sockets of a process whose re-checks fall due within
RECHECK_BATCH_SECONDS are checked together, in one database hop (detection/live/recheck.py).
A re-check that fails unexpectedly is logged and closes the socket (1011): it never dies silently,
leaving the socket open for ever.

Abuse: ASGI has no back-pressure, so daphne buffers whatever is sent to a client that does
not read until its ping timeout (20 + 30 s by default) drops the connection. Resyncs are
answered one at a time (the rest coalesce); a socket may send MAX_REQUESTS messages at once
and REQUESTS_PER_SECOND after that, and be sent SNAPSHOT_BUDGET_BYTES of snapshots at once
and SNAPSHOT_REFILL_BYTES_PER_SECOND after that. Beyond either, it is closed with
CLOSE_TOO_MANY_REQUESTS (4429) and logged at WARNING. What one socket can make daphne hold
is so bounded (~8 MiB, see the constants)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import DatabaseError

from detection.access import visible_analyses
from detection.frames import latest_frame_path
from detection.live.messages import (
    frame_url,
    incident_message,
    live_score_message,
    score_from_row,
    status_message,
)
from detection.live.publisher import group_name
from detection.live.recheck import AccessBatch
from detection.metrics import SOCKET_RESYNCS
from detection.models import Analysis, FrameScore

log = logging.getLogger(__name__)

RECHECK_SECONDS = 15.0  # how soon revoked access or a logout closes an open socket
# ... plus at most this: re-checks that fall due within it are read together (at most half
# a period, so a shortened period still re-checks often).
RECHECK_BATCH_SECONDS = 1.0
# A client further behind gets the newest MAX_RESYNC scores (it charts a window of 60 or
# so). The reply must stay under daphne's 1 MiB message cap, which applies to what the
# server sends too: a score is ~200 bytes of JSON, so 3,000 make ~0.6 MB.
MAX_RESYNC = 3_000
MAX_INCIDENTS = 20
CLOSE_INTERNAL_ERROR = 1011  # a bug: logged with a traceback; the page retries
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY_REQUESTS = 4429  # an abusive client; a page that gets it reconnects later
CLOSE_UNAVAILABLE = 4503  # the channel layer or the database failed: the page retries

# Messages a socket may send: MAX_REQUESTS at once, then REQUESTS_PER_SECOND. The page
# sends nothing but resyncs, one per gap it sees and then none until the reply arrives, so
# it stays far below this even on a layer that drops messages; junk counts too (each
# message costs a JSON parse of up to daphne's 1 MiB).
MAX_REQUESTS = 20
REQUESTS_PER_SECOND = 2.0
# Snapshot bytes a socket may be sent: SNAPSHOT_BUDGET_BYTES at once (six of the largest
# replies), then SNAPSHOT_REFILL_BYTES_PER_SECOND. A page gets one large snapshot when it
# reconnects after an outage and small ones for gaps. A client that reads nothing can so
# make daphne hold at most 4 MiB + 50 s (daphne's ping horizon) x 64 KiB/s + one reply
# (0.6 MB) = ~8 MiB; unbounded, 2,000 unread resyncs grew daphne by 390-700 MB.
SNAPSHOT_BUDGET_BYTES = 4 * 1024 * 1024
SNAPSHOT_REFILL_BYTES_PER_SECOND = 64 * 1024
# Group messages waiting in one socket's inbox (see _Hub); more are dropped.
INBOX_CAPACITY = 1000
# How old the stored state a re-check compares may be (shared by a process's sockets).
STATE_MAX_AGE = 1.0
# Where _relay keeps a group message's JSON text, encoded once for all the local sockets.
ENCODED = "_encoded"


def _unavailable_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [OSError, TimeoutError, DatabaseError]
    try:  # the redis extra is optional
        from redis.exceptions import RedisError
    except ImportError:
        pass
    else:
        errors.append(RedisError)
    return tuple(errors)


# What a failing layer or database raises (redis-py's errors are not OSErrors). Anything else
# is a bug: it propagates, and daphne logs it and closes the socket with 1011.
UNAVAILABLE_ERRORS = _unavailable_errors()


def _client_gone_errors() -> tuple[type[Exception], ...]:
    # ASGI asks a server to raise an OSError when the app sends on a closed connection;
    # daphne raises autobahn's Disconnected (a RuntimeError) while the close is under way.
    errors: list[type[Exception]] = [OSError]
    try:
        from autobahn.exception import Disconnected
    except ImportError:  # another ASGI server
        pass
    else:
        errors.append(Disconnected)
    return tuple(errors)


# What sending to a client that has just closed raises (see AnalysisConsumer.__call__).
CLIENT_GONE_ERRORS = _client_gone_errors()

SCORE_FIELDS = FrameScore.SCORE_FIELDS
# Group messages from the publisher ("analysis.<kind>") and the handler that relays each.
RELAYS = {
    f"analysis.{kind}": f"analysis_{kind}" for kind in ("score", "status", "progress", "incident")
}


def snapshot(user: Any, analysis_id: int, after: int | None) -> dict[str, Any] | None:
    """The snapshot message, or None when the user may not see the analysis."""
    analysis = visible_analyses(user).select_related("camera").filter(pk=analysis_id).first()
    if analysis is None:
        return None
    rows = FrameScore.objects.filter(analysis=analysis).values_list(*SCORE_FIELDS)
    truncated = False
    if after is None:
        scores = list(rows.order_by("-frame_index")[: analysis.window_size])[::-1]
    else:
        missed = rows.filter(frame_index__gt=after)
        scores = list(missed.order_by("-frame_index")[: MAX_RESYNC + 1])[::-1]
        truncated = len(scores) > MAX_RESYNC
        scores = scores[-MAX_RESYNC:]
    incidents = analysis.incidents.select_related("acknowledged_by")[:MAX_INCIDENTS]
    frame = latest_frame_path(analysis.pk)
    return {
        "type": "snapshot",
        "analysis": analysis.pk,
        "name": analysis.name,
        "status": analysis.status,
        "camera_status": analysis.camera.status,
        "last_error": analysis.camera.last_error,
        "camera_last_frame_at": analysis.camera.last_frame_at.isoformat()
        if analysis.camera.last_frame_at
        else None,
        "phase": (analysis.metadata or {}).get("phase", ""),
        "error_message": analysis.error_message,
        "progress": analysis.progress,
        "expected_frames": (analysis.metadata or {}).get("expected_frames"),
        "threshold": analysis.threshold_in_use,
        "window_size": analysis.window_size,
        "is_live": analysis.camera.is_live,
        "scores": [score_from_row(r) for r in scores],
        # The summary as stored when this snapshot was read; pages update it per score.
        "summary": {
            "frames_scored": analysis.frames_scored,
            "last_score": analysis.last_score,
            "peak_score": analysis.peak_score,
            "peak_time_s": analysis.peak_time_s,
            "average_score": analysis.average_score,
        },
        "incidents": [incident_message(i) for i in incidents],
        "frame_url": frame_url(analysis.pk, analysis.last_frame_index) if frame.exists() else None,
        "resync": after is not None,
        "truncated": truncated,
    }


def may_see(user: Any, analysis_id: int) -> bool:
    return visible_analyses(user).filter(pk=analysis_id).exists()


def stored_state(analysis_id: int) -> tuple[int | None, str] | None:
    """The newest stored frame index and the status, as the worker last wrote them."""
    return Analysis.objects.filter(pk=analysis_id).values_list("last_frame_index", "status").first()


def newest_score(analysis_id: int) -> dict[str, Any] | None:
    """The newest stored score as a live message, `previous` included."""
    rows = list(
        FrameScore.objects.filter(analysis_id=analysis_id)
        .order_by("-frame_index")
        .values_list(*SCORE_FIELDS)[:2]
    )
    if not rows:
        return None
    previous = rows[1][0] if len(rows) > 1 else None
    # The picture too: its score's message, which said to show it, may be the one dropped.
    index = rows[0][0]
    picture = frame_url(analysis_id, index) if latest_frame_path(analysis_id).exists() else None
    message = live_score_message(score_from_row(rows[0]), previous=previous, picture=picture)
    return {"type": "score", **message}


def resync_after(content: Any) -> int | None:
    """The `after` of a resync request; None for anything else, which is ignored."""
    if not isinstance(content, dict) or content.get("type") != "resync":
        return None
    after = content.get("after")
    if not isinstance(after, int) or isinstance(after, bool):
        return None
    return after


class TokenBucket:
    """`capacity` at once, refilled at `per_second`: a rate limit that allows bursts."""

    def __init__(self, capacity: float, per_second: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.tokens = capacity
        self.stamp = time.monotonic()

    def available(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now
        return self.tokens > 0

    def spend(self, amount: float) -> None:
        # May go below zero: a reply is sent whole, and the debt delays the next one.
        self.tokens -= amount


class _Hub:
    """One subscription to an analysis's group per process, fanned out to its sockets here.

    Every socket of a page used to join the group on the layer itself, so the worker sent
    each message once per socket and daphne pulled each copy from the layer one by one: at
    1,000 viewers (2,000 sockets, a score and a frame notice a second each) that was most
    of the work of every process. Now the first socket of an analysis in a process joins a
    channel of its own to the group and the messages it receives are put in the inbox of
    every local socket, where the socket's own loop relays them exactly as before.

    Best effort, as the layer is: an inbox holds at most INBOX_CAPACITY messages (the page
    sees the gap and resyncs). A layer error while receiving closes every local socket of
    the analysis with CLOSE_UNAVAILABLE, as it closed each one before; the next socket
    subscribes afresh. The re-check's rejoin (`refresh`) rejoins the hub's channel, at most
    once per half period whatever the number of sockets.
    """

    hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, str], _Hub]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, layer: Any, group: str, key: tuple[int, str]) -> None:
        self.layer = layer
        self.group = group
        self.key = key
        self.members: set[AnalysisConsumer] = set()
        self.channel = ""
        self.joined_at = 0.0
        self.subscribed = asyncio.ensure_future(self._subscribe())
        self.pump: asyncio.Task[None] | None = None
        self.closing: asyncio.Future[None] | None = None
        self.state_read: asyncio.Future[tuple[int | None, str] | None] | None = None
        self.state_read_at = 0.0

    @classmethod
    async def join(cls, consumer: AnalysisConsumer, group: str) -> _Hub:
        loop = asyncio.get_running_loop()
        hubs = cls.hubs.setdefault(loop, {})
        key = (id(consumer.channel_layer), group)
        hub = hubs.get(key)
        if hub is None:
            hub = hubs[key] = cls(consumer.channel_layer, group, key)
        hub.members.add(consumer)
        try:
            await asyncio.shield(hub.subscribed)
        except BaseException:
            hub.members.discard(consumer)
            subscribed = hub.subscribed
            if not subscribed.done() or subscribed.cancelled() or subscribed.exception():
                hub._forget()  # failed (or nobody waits for it): the next socket starts anew
            elif not hub.members:
                hub._close_soon()  # it was cancelled, alone
            raise
        return hub

    async def _subscribe(self) -> None:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        self.joined_at = time.monotonic()
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                message = await self.layer.receive(self.channel)
                relayed = message.get("type") in RELAYS
                for member in list(self.members):
                    # A socket with nothing before the message relays it from here, in
                    # this task (its send does not wait); the others take it in turn from
                    # their inboxes. So the common case costs no wake-up of the socket's
                    # own task (channels' receive loop makes a task and a wait per message:
                    # at 1,000 viewers that was a third of every daphne's work).
                    if relayed and member._relays_now():
                        await member._relay_now(message)
                    else:
                        member._deliver(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (handed to each socket, which decides)
            # Every local socket of the analysis learns it from its own inbox.
            self._forget()
            for member in list(self.members):
                member._deliver(exc)

    async def refresh(self) -> None:
        """Idempotent; restores a membership that a restarted Redis forgot or that
        channels_redis expired (group_expiry), which would otherwise go silent."""
        if time.monotonic() - self.joined_at < RECHECK_SECONDS / 2:
            return
        self.joined_at = time.monotonic()
        await self.layer.group_add(self.group, self.channel)

    async def stored_state(self, analysis_id: int) -> tuple[int | None, str] | None:
        """`stored_state`, read at most once a second for all the local sockets (each
        re-check compares it with what was stored a whole period before)."""
        if self.state_read is None or (
            self.state_read.done() and time.monotonic() - self.state_read_at > STATE_MAX_AGE
        ):
            self.state_read_at = time.monotonic()
            self.state_read = asyncio.ensure_future(
                database_sync_to_async(stored_state)(analysis_id)
            )
        read = self.state_read
        try:
            return await asyncio.shield(read)
        except Exception:
            if self.state_read is read:
                self.state_read = None  # a failure is not kept: the next socket reads again
            raise

    async def leave(self, consumer: AnalysisConsumer) -> None:
        self.members.discard(consumer)
        if not self.members:
            await self.close()

    def release(self, consumer: AnalysisConsumer) -> None:
        """`leave` for a socket that ended on an error, where nothing can be awaited: the
        last one out still unsubscribes (in the background), or the process would stay in
        the group, receiving the analysis's every message for nobody, until it restarts."""
        self.members.discard(consumer)
        if not self.members:
            self._close_soon()

    def _close_soon(self) -> None:
        # Forgotten now, so that a socket arriving meanwhile subscribes afresh rather than
        # joining a hub on its way out.
        self._forget()
        if self.closing is None:
            self.closing = asyncio.ensure_future(self.close())
            self.closing.add_done_callback(self._closed)

    def _closed(self, closing: asyncio.Future[None]) -> None:
        if not closing.cancelled() and closing.exception() is not None:
            # The membership expires with the layer's group expiry (or went with Redis).
            log.info("left %s without the layer: %s", self.group, closing.exception())

    async def close(self) -> None:
        """Unsubscribe (the last local socket left). Raises what the layer raises."""
        self._forget()
        if self.pump is not None:
            self.pump.cancel()
        if self.channel:
            channel, self.channel = self.channel, ""
            await self.layer.group_discard(self.group, channel)

    def _forget(self) -> None:
        hubs = self.hubs.get(asyncio.get_running_loop(), {})
        if hubs.get(self.key) is self:
            del hubs[self.key]
        if not self.members and not self.subscribed.done():
            self.subscribed.cancel()


class AnalysisConsumer(AsyncJsonWebsocketConsumer):
    analysis_id: int
    user: Any = None  # the socket's user, as last checked
    group: str = ""  # the group joined; "" before joining and once closing
    recheck: asyncio.Task[None] | None = None
    answering: asyncio.Task[None] | None = None  # the resync being answered
    wanted: int | None = None  # the next resync to answer: the smallest `after` asked for
    requests: TokenBucket
    snapshot_bytes: TokenBucket
    # What this socket has told the page: the newest frame index and the status.
    sent_index: int | None = None
    sent_status: str | None = None
    hub: _Hub | None = None  # what relays the group's messages to this socket's inbox
    _inbox: asyncio.Queue[Any] | None = None
    # Group messages put in the inbox and not yet relayed by the socket's task: while any
    # is, the hub queues behind them rather than relaying directly (order is kept).
    _queued: int = 0

    # channels receives from the layer on the socket's own channel; this socket receives
    # from its inbox instead, which its analysis's _Hub fills (the channel name stays).
    @property
    def channel_receive(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        return self._receive_inbox

    @channel_receive.setter
    def channel_receive(self, value: Any) -> None:
        pass

    async def _receive_inbox(self) -> dict[str, Any]:
        if self._inbox is None:
            self._inbox = asyncio.Queue(INBOX_CAPACITY)
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _deliver(self, item: Any) -> None:
        if self._inbox is None:
            self._inbox = asyncio.Queue(INBOX_CAPACITY)
        if isinstance(item, BaseException):
            # A failed layer: make room, so the socket sees it next.
            while self._inbox.full():
                self._inbox.get_nowait()
                self._queued -= 1
        elif self._inbox.full():
            return  # dropped, as a full layer drops; the page resyncs on the gap
        else:
            self._queued += 1  # counted down once relayed (`dispatch`)
        self._inbox.put_nowait(item)

    def _relays_now(self) -> bool:
        """Whether the hub may relay a message here at once: the snapshot is sent (the
        re-check starts right after it), nothing waits in the inbox or is being relayed
        from it, no resync is being answered (its reply goes first) and the socket is not
        closing."""
        return (
            self.recheck is not None
            and not self._queued
            and bool(self.group)
            and (self.answering is None or self.answering.done())
        )

    async def _relay_now(self, message: dict[str, Any]) -> None:
        try:
            await getattr(self, RELAYS[message["type"]])(message)
        except Exception as exc:  # noqa: BLE001 (the socket's own task decides, as before)
            # What relaying raised in the socket's task would have ended that socket: it
            # still does, from its inbox, without stopping the hub for the others.
            self._deliver(exc)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_unless_gone(message: dict[str, Any]) -> None:
            try:
                await send(message)
            except CLIENT_GONE_ERRORS as exc:
                # The page closed while a message was on its way to it (viewers leaving as
                # a score arrives: a few in every hundred at 1,000 viewers). Nobody is left
                # to tell, and the server's disconnect ends the socket next; uncaught, each
                # was an ERROR with a traceback in daphne's log.
                log.debug(
                    "analysis %s: not sent, the client left: %s",
                    getattr(self, "analysis_id", "?"),
                    exc,
                )

        try:
            await super().__call__(scope, receive, send_unless_gone)
        except UNAVAILABLE_ERRORS as exc:
            # Raised while receiving from the layer (Redis died under daphne) or in a
            # handler. Without this, daphne logs a traceback per socket.
            self._log_unavailable(exc)
            # The socket may be gone already; closing it is then a no-op.
            await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})
        finally:
            self._cancel_tasks()
            # Ended without a disconnect (an error): the hub must not relay to it any more.
            self.group = ""
            hub, self.hub = self.hub, None
            if hub is not None:
                hub.release(self)

    async def connect(self) -> None:
        user = self.user = self.scope.get("user")
        self.analysis_id = int(self.scope["url_route"]["kwargs"]["pk"])
        self.requests = TokenBucket(MAX_REQUESTS, REQUESTS_PER_SECOND)
        self.snapshot_bytes = TokenBucket(SNAPSHOT_BUDGET_BYTES, SNAPSHOT_REFILL_BYTES_PER_SECOND)
        # Accept, then close with a code, so the page can tell "forbidden" (stop retrying)
        # from a network failure (retry). Nothing is sent and no group is joined first.
        await self.accept()
        if user is None or not user.is_authenticated:
            log.info(
                "socket refused: anonymous client %s, analysis %s", self._peer(), self.analysis_id
            )
            await self._close(CLOSE_FORBIDDEN)
            return
        after = self._after(self.scope.get("query_string", b"").decode())
        if not await database_sync_to_async(may_see)(user, self.analysis_id):
            # Logged at WARNING: a signed-in user probing analyses they may not see is
            # what an operator wants to notice (the page itself only shows "not found").
            log.warning(
                "socket refused: user %r (id %s) may not see analysis %s, from %s",
                user.get_username(),
                user.pk,
                self.analysis_id,
                self._peer(),
            )
            await self._close(CLOSE_NOT_FOUND)
            return
        # Join before reading the snapshot: a score stored after the read but published
        # before the join would be lost without a trace when nothing follows it (the end of
        # a run). What arrives meanwhile is relayed after the snapshot; pages drop repeats.
        self.group = group_name(self.analysis_id)
        self.hub = await _Hub.join(self, self.group)
        message = await database_sync_to_async(snapshot)(user, self.analysis_id, after)
        if message is None:  # deleted (or hidden) in the meantime
            await self._close(CLOSE_NOT_FOUND)
            return
        await self._send_snapshot(message)
        self.recheck = asyncio.create_task(self._guarded("re-check", self._recheck_loop))

    def _log_unavailable(self, exc: BaseException) -> None:
        log.warning(
            "socket closed: live feed of analysis %s unavailable (%s): %s",
            getattr(self, "analysis_id", "?"),
            type(exc).__name__,
            exc,
        )

    def _peer(self) -> str:
        client = self.scope.get("client") or ("?", 0)
        return f"{client[0]}:{client[1]}"

    @staticmethod
    def _after(query: str) -> int | None:
        values = parse_qs(query).get("after")
        try:
            return int(values[0]) if values else None
        except ValueError:
            return None

    async def disconnect(self, code: int) -> None:
        self._cancel_tasks()
        await self._leave_group()

    def _cancel_tasks(self) -> None:
        for task in (self.recheck, self.answering):
            if task is not None:
                task.cancel()

    async def _leave_group(self) -> None:
        group, self.group = self.group, ""
        hub, self.hub = self.hub, None
        if not group or hub is None:
            return
        try:
            await hub.leave(self)
        except UNAVAILABLE_ERRORS as exc:
            # The membership expires with the layer's group expiry (or went with Redis).
            log.info("socket left analysis %s without the layer: %s", self.analysis_id, exc)

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message["type"].startswith("websocket."):
            await self._dispatch(message)
            return
        try:  # the rest came from the inbox (`_deliver`)
            await self._dispatch(message)
        finally:
            self._queued -= 1

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.receive":
            # channels closes stale database connections before every handler, in the one
            # thread that runs the process's database work: behind a resync being read. So
            # each incoming message would wait for the read before it, one by one, and
            # none could coalesce. Receiving touches no database (the answer is read in a
            # task, through database_sync_to_async, which closes them itself).
            await self.websocket_receive(message)
            return
        relay = RELAYS.get(message["type"])
        if relay is not None:
            # The same for what the worker publishes: relaying touches no database, and
            # that hop, per message and socket, queued every score of every socket behind
            # the one database thread (each re-check and snapshot read): at 1,000 viewers
            # (2,000 sockets, 4,000 messages a second) it was most of daphne's work and
            # latency (docs/performance.md, "1,000 viewers").
            await getattr(self, relay)(message)
            return
        if message["type"].startswith("analysis."):
            # A kind this release does not relay, from a worker of another release (say,
            # the "frame" notices of old, during an upgrade): ignored, where channels would
            # fail every socket of the analysis with 1011 at each one.
            return
        if message["type"] == "websocket.connect":
            # And for the handshake: connecting reads through database_sync_to_async only
            # (which closes stale connections itself); the extra hop made a handshake wait
            # behind every re-check queued in that thread.
            await self.websocket_connect(message)
            return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.group:  # closing: nothing is answered any more
            return
        if not self.requests.available():
            await self._close_abusive(
                f"requests (over {MAX_REQUESTS} at once, then {REQUESTS_PER_SECOND:g} a second)"
            )
            return
        self.requests.spend(1)
        # Binary frames, empty text and text that is not JSON are ignored, like any other
        # request that is not a resync (the base class would fail the socket with 1011).
        # So is JSON nested too deeply for the parser ("[" * 100000): RecursionError.
        if not text_data:
            return
        try:
            content = await self.decode_json(text_data)
        except (ValueError, RecursionError):
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The only request a client may make: what it missed.
        after = resync_after(content)
        if after is None:
            return
        SOCKET_RESYNCS.inc()
        # One resync in flight per socket. Requests that arrive while one is answered
        # collapse into one follow-up from the smallest `after` among them. Dropping those
        # the reply in flight seems to cover would be wrong: it was read before they came,
        # so it misses what was stored since; one more reply is always correct (the page
        # drops what it holds) and costs at most one reply per reply.
        self.wanted = after if self.wanted is None else min(self.wanted, after)
        if self.answering is None or self.answering.done():
            self.answering = asyncio.create_task(self._guarded("resync", self._answer_resyncs))

    async def _answer_resyncs(self) -> None:
        while self.wanted is not None and self.group:
            after, self.wanted = self.wanted, None
            if not self.snapshot_bytes.available():
                await self._close_abusive(
                    f"snapshot bytes (over {SNAPSHOT_BUDGET_BYTES // 1024} KiB at once, then "
                    f"{SNAPSHOT_REFILL_BYTES_PER_SECOND // 1024} KiB/s)"
                )
                return
            message = await database_sync_to_async(snapshot)(self.user, self.analysis_id, after)
            if not self.group:  # closed while the snapshot was read
                return
            if message is None:
                await self._close(CLOSE_FORBIDDEN)
                return
            await self._send_snapshot(message)

    async def _send_snapshot(self, message: dict[str, Any]) -> None:
        scores = message["scores"]
        if not message["resync"]:
            self.sent_index = None
        if scores:
            self.sent_index = max(self.sent_index or -1, scores[-1]["frame_index"])
        self.sent_status = message["status"]
        text = await self.encode_json(message)
        self.snapshot_bytes.spend(len(text))  # ASCII: json.dumps escapes the rest
        await self.send(text_data=text)

    async def _guarded(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Runs one of the socket's tasks; whatever ends it closes the socket, never silently.

        A task's exception is otherwise kept by the task until it is garbage-collected,
        and the socket stays open with no re-check (or no more answers) behind it.
        """
        try:
            await work()
        except UNAVAILABLE_ERRORS as exc:
            self._log_unavailable(exc)
            await self._close(CLOSE_UNAVAILABLE)
        except Exception:
            log.exception(
                "socket closed: the %s of analysis %s failed (%s)",
                name,
                self.analysis_id,
                self._peer(),
            )
            await self._close(CLOSE_INTERNAL_ERROR)

    async def _recheck_loop(self) -> None:
        before: tuple[int | None, str] | None = None  # the stored state one period ago
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            session = self.scope.get("session")
            key = session.session_key if session is not None else None
            user = await AccessBatch.check(
                (self.user, key, self.analysis_id),
                window=min(RECHECK_BATCH_SECONDS, RECHECK_SECONDS / 2),
            )
            if user is None:
                log.info(
                    "socket closed: user id %s lost access to analysis %s or its session "
                    "ended (logged out, password changed, deleted or deactivated) (%s)",
                    self.user.pk,
                    self.analysis_id,
                    self._peer(),
                )
                await self._close(CLOSE_FORBIDDEN)
                return
            self.user = user  # later snapshots see its current groups and flags
            # Idempotent; restores a membership that a restarted Redis forgot or that
            # channels_redis expired (group_expiry), which would otherwise go silent.
            if self.hub is not None:
                await self.hub.refresh()
            if self.hub is not None:
                now = await self.hub.stored_state(self.analysis_id)
            else:
                now = await database_sync_to_async(stored_state)(self.analysis_id)
            if before is not None and now is not None:
                await self._announce_missed(before, now)
            before = now

    async def _announce_missed(
        self, before: tuple[int | None, str], now: tuple[int | None, str]
    ) -> None:
        """Tell the page what was stored a whole period ago and never relayed."""
        stored_index, stored_status = before
        if stored_index is not None and (self.sent_index is None or self.sent_index < stored_index):
            message = await database_sync_to_async(newest_score)(self.analysis_id)
            if message is not None:
                # The newest score, with its real `previous`: the page appends it, or sees
                # the gap and asks for the rest, exactly as after any dropped message.
                log.info("analysis %s: relaying scores the layer dropped", self.analysis_id)
                await self._relay("score", message)
        if stored_status == now[1] and stored_status != self.sent_status:
            await self._relay("status", status_message(now[1]))

    async def _close_abusive(self, what: str) -> None:
        # WARNING: one client flooding the server is what an operator wants to notice.
        log.warning(
            "socket closed (%s): too many %s from user %r (id %s) at %s, analysis %s",
            CLOSE_TOO_MANY_REQUESTS,
            what,
            self.user.get_username(),
            self.user.pk,
            self._peer(),
            self.analysis_id,
        )
        await self._close(CLOSE_TOO_MANY_REQUESTS)

    async def _close(self, code: int) -> None:
        # Nothing is sent or answered after this, even by a task already under way: leaving
        # the group empties `group` before its first await, and every sender checks it.
        await self._leave_group()
        await self.close(code=code)

    # Group messages from detection.live.publisher.ChannelPublisher ("analysis.<kind>").

    async def _relay(self, kind: str, event: dict[str, Any]) -> None:
        if self.answering is not None and not self.answering.done():
            # After the resync being answered, as when resyncs were answered in line: a
            # score stored after its read and relayed before it would be dropped by the
            # page (it ignores scores while resyncing) yet counted as sent here.
            await asyncio.wait({self.answering})
        if not self.group:
            return  # refused meanwhile; a late message must not leak
        if kind == "score" and isinstance(event.get("frame_index"), int):
            self.sent_index = max(self.sent_index or -1, event["frame_index"])
        elif kind == "status" and isinstance(event.get("status"), str):
            self.sent_status = event["status"]
            if event.get("reset"):
                self.sent_index = None  # the stored series was replaced (a re-run)
        # The hub hands every local socket the same message: the first one encodes it.
        text = event.get(ENCODED)
        if text is None:
            payload = {k: v for k, v in event.items() if k not in ("type", ENCODED)}
            text = event[ENCODED] = await self.encode_json({"type": kind, **payload})
        await self.send(text_data=text)

    async def analysis_score(self, event: dict[str, Any]) -> None:
        await self._relay("score", event)

    async def analysis_status(self, event: dict[str, Any]) -> None:
        await self._relay("status", event)

    async def analysis_progress(self, event: dict[str, Any]) -> None:
        await self._relay("progress", event)

    async def analysis_incident(self, event: dict[str, Any]) -> None:
        await self._relay("incident", event)
