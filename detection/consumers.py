"""The live analysis socket: `/ws/analyses/<id>/`.

Read-only. On connect it checks the user (the same rule as the pages), joins the analysis's
group, then sends a snapshot from the database; afterwards it relays what the worker
publishes. The database is the record and the layer is best effort: a client that missed
messages (it sees a score whose `previous` is not the last index it holds, or it
reconnects) asks for what it missed with `after` and receives exactly that.

Faults: when the channel layer (Redis) or the database fails under an open socket, the
socket is closed with CLOSE_UNAVAILABLE, so the page reconnects once they are back rather
than sitting on a dead subscription. Every RECHECK_SECONDS the socket also rejoins its group
(a restarted Redis has forgotten it) and compares the database with what it relayed: scores
or a status stored a whole period ago and never relayed (dropped by an overflowing layer at
the end of a run, when no later score would reveal the gap) are announced then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.sessions.backends.base import SessionBase
from django.db import DatabaseError

from .access import visible_analyses
from .frames import latest_frame_path
from .live import group_name, incident_message
from .models import Analysis, FrameScore

log = logging.getLogger(__name__)

RECHECK_SECONDS = 15.0  # how soon revoked access or a logout closes an open socket
# A client further behind gets the newest MAX_RESYNC scores (it charts a window of 60 or
# so). The reply must stay under daphne's 1 MiB message cap, which applies to what the
# server sends too: a score is ~200 bytes of JSON, so 3,000 make ~0.6 MB.
MAX_RESYNC = 3_000
MAX_INCIDENTS = 20
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503  # the channel layer or the database failed: the page retries


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

SCORE_FIELDS = FrameScore.SCORE_FIELDS


def score_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    frame_index, time_s, captured_at, score, normal, anomaly = row
    return {
        "frame_index": frame_index,
        "time_s": time_s,
        "captured_at": captured_at.isoformat() if captured_at else None,
        "score": score,
        "normal": normal,
        "anomaly": anomaly,
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
        "error_message": analysis.error_message,
        "progress": analysis.progress,
        "threshold": analysis.threshold,
        "window_size": analysis.window_size,
        "is_live": analysis.camera.is_live,
        "scores": [score_dict(r) for r in scores],
        # The summary as stored when this snapshot was read; pages update it per score.
        "summary": {
            "frames_scored": analysis.frames_scored,
            "last_score": analysis.last_score,
            "peak_score": analysis.peak_score,
            "peak_time_s": analysis.peak_time_s,
            "average_score": analysis.average_score,
        },
        "incidents": [incident_message(i) for i in incidents],
        "frame_url": f"/analyses/{analysis.pk}/frame.jpg?v={analysis.last_frame_index}"
        if frame.exists()
        else None,
        "resync": after is not None,
        "truncated": truncated,
    }


def may_see(user: Any, analysis_id: int) -> bool:
    return visible_analyses(user).filter(pk=analysis_id).exists()


def still_allowed(user: Any, session: SessionBase | None, analysis_id: int) -> bool:
    """Same rule as on connect, plus: the session still exists (no logout since)."""
    if session is not None and session.session_key and not session.exists(session.session_key):
        return False
    user.refresh_from_db(fields=["is_active", "is_superuser"])
    return may_see(user, analysis_id)


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
    return {"type": "score", **score_dict(rows[0]), "previous": previous}


class AnalysisConsumer(AsyncJsonWebsocketConsumer):
    analysis_id: int
    group: str = ""
    recheck: asyncio.Task[None] | None = None
    # What this socket has told the page: the newest frame index and the status.
    sent_index: int | None = None
    sent_status: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except UNAVAILABLE_ERRORS as exc:
            # Raised while receiving from the layer (Redis died under daphne) or in a
            # handler. Without this, daphne logs a traceback per socket.
            log.warning(
                "socket closed: live feed of analysis %s unavailable (%s): %s",
                getattr(self, "analysis_id", "?"),
                type(exc).__name__,
                exc,
            )
            # The socket may be gone already; closing it is then a no-op.
            await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})
        finally:
            if self.recheck is not None:
                self.recheck.cancel()

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.analysis_id = int(self.scope["url_route"]["kwargs"]["pk"])
        # Accept, then close with a code, so the page can tell "forbidden" (stop retrying)
        # from a network failure (retry). Nothing is sent and no group is joined first.
        await self.accept()
        if user is None or not user.is_authenticated:
            log.info(
                "socket refused: anonymous client %s, analysis %s", self._peer(), self.analysis_id
            )
            await self.close(code=CLOSE_FORBIDDEN)
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
            await self.close(code=CLOSE_NOT_FOUND)
            return
        # Join before reading the snapshot: a score stored after the read but published
        # before the join would be lost without a trace when nothing follows it (the end of
        # a run). What arrives meanwhile is relayed after the snapshot; pages drop repeats.
        self.group = group_name(self.analysis_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        message = await database_sync_to_async(snapshot)(user, self.analysis_id, after)
        if message is None:  # deleted (or hidden) in the meantime
            await self._leave_group()
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self._send_snapshot(message)
        self.recheck = asyncio.create_task(self._recheck_forever())

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
        if self.recheck is not None:
            self.recheck.cancel()
        await self._leave_group()

    async def _leave_group(self) -> None:
        group, self.group = self.group, ""
        if not group:
            return
        try:
            await self.channel_layer.group_discard(group, self.channel_name)
        except UNAVAILABLE_ERRORS as exc:
            # The membership expires with the layer's group expiry (or went with Redis).
            log.info("socket left analysis %s without the layer: %s", self.analysis_id, exc)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Binary frames, empty text and text that is not JSON are ignored, like any other
        # request that is not a resync (the base class would fail the socket with 1011).
        if not text_data:
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The only request a client may make: what it missed.
        if not isinstance(content, dict) or content.get("type") != "resync":
            return
        after = content.get("after")
        if not isinstance(after, int) or isinstance(after, bool):
            return
        message = await database_sync_to_async(snapshot)(
            self.scope["user"], self.analysis_id, after
        )
        if message is None:
            await self._refuse()
        else:
            await self._send_snapshot(message)

    async def _send_snapshot(self, message: dict[str, Any]) -> None:
        scores = message["scores"]
        if not message["resync"]:
            self.sent_index = None
        if scores:
            self.sent_index = max(self.sent_index or -1, scores[-1]["frame_index"])
        self.sent_status = message["status"]
        await self.send_json(message)

    async def _recheck_forever(self) -> None:
        try:
            await self._recheck_loop()
        except UNAVAILABLE_ERRORS as exc:
            log.warning(
                "socket closed: live feed of analysis %s unavailable (%s): %s",
                self.analysis_id,
                type(exc).__name__,
                exc,
            )
            await self.close(code=CLOSE_UNAVAILABLE)

    async def _recheck_loop(self) -> None:
        before: tuple[int | None, str] | None = None  # the stored state one period ago
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            allowed = await database_sync_to_async(still_allowed)(
                self.scope["user"], self.scope.get("session"), self.analysis_id
            )
            if not allowed:
                log.info(
                    "socket closed: access to analysis %s revoked or session ended (%s)",
                    self.analysis_id,
                    self._peer(),
                )
                await self._refuse()
                return
            # Idempotent; restores a membership that a restarted Redis forgot or that
            # channels_redis expired (group_expiry), which would otherwise go silent.
            await self.channel_layer.group_add(self.group, self.channel_name)
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
            await self._relay("status", {"status": now[1]})

    async def _refuse(self) -> None:
        await self._leave_group()
        await self.close(code=CLOSE_FORBIDDEN)

    # Group messages from detection.live.ChannelPublisher ("analysis.<kind>").

    async def _relay(self, kind: str, event: dict[str, Any]) -> None:
        if not self.group:
            return  # refused meanwhile; a late message must not leak
        payload = {k: v for k, v in event.items() if k != "type"}
        if kind == "score" and isinstance(payload.get("frame_index"), int):
            self.sent_index = max(self.sent_index or -1, payload["frame_index"])
        elif kind == "status" and isinstance(payload.get("status"), str):
            self.sent_status = payload["status"]
            if payload.get("reset"):
                self.sent_index = None  # the stored series was replaced (a re-run)
        await self.send_json({"type": kind, **payload})

    async def analysis_score(self, event: dict[str, Any]) -> None:
        await self._relay("score", event)

    async def analysis_status(self, event: dict[str, Any]) -> None:
        await self._relay("status", event)

    async def analysis_progress(self, event: dict[str, Any]) -> None:
        await self._relay("progress", event)

    async def analysis_incident(self, event: dict[str, Any]) -> None:
        await self._relay("incident", event)

    async def analysis_frame(self, event: dict[str, Any]) -> None:
        await self._relay("frame", event)
