"""The live analysis socket: `/ws/analyses/<id>/`.

Read-only. On connect it checks the user (the same rule as the pages), joins the analysis's
group, then sends a snapshot from the database; afterwards it relays what the worker
publishes. The database is the record and the layer is best effort: a client that missed
messages (it sees a score whose `previous` is not the last index it holds, or it
reconnects) asks for what it missed with `after` and receives exactly that.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.sessions.backends.base import SessionBase

from .access import visible_analyses
from .frames import latest_frame_path
from .live import group_name, incident_message
from .models import FrameScore

log = logging.getLogger(__name__)

RECHECK_SECONDS = 15.0  # how soon revoked access or a logout closes an open socket
MAX_RESYNC = 10_000  # a client further behind gets the newest MAX_RESYNC scores
MAX_INCIDENTS = 20
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

SCORE_FIELDS = (
    "frame_index",
    "time_s",
    "captured_at",
    "score",
    "normal_similarity",
    "anomaly_similarity",
)


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


def still_allowed(user: Any, session: SessionBase | None, analysis_id: int) -> bool:
    """Same rule as on connect, plus: the session still exists (no logout since)."""
    if session is not None and session.session_key and not session.exists(session.session_key):
        return False
    user.refresh_from_db(fields=["is_active", "is_superuser"])
    return visible_analyses(user).filter(pk=analysis_id).exists()


class AnalysisConsumer(AsyncJsonWebsocketConsumer):
    analysis_id: int
    group: str = ""
    recheck: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.analysis_id = int(self.scope["url_route"]["kwargs"]["pk"])
        # Accept, then close with a code, so the page can tell "forbidden" (stop retrying)
        # from a network failure (retry). Nothing is sent and no group is joined first.
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        after = self._after(self.scope.get("query_string", b"").decode())
        message = await database_sync_to_async(snapshot)(user, self.analysis_id, after)
        if message is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = group_name(self.analysis_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_json(message)
        self.recheck = asyncio.create_task(self._recheck_forever())

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
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = ""

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
            await self.send_json(message)

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            allowed = await database_sync_to_async(still_allowed)(
                self.scope["user"], self.scope.get("session"), self.analysis_id
            )
            if not allowed:
                await self._refuse()
                return

    async def _refuse(self) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = ""
        await self.close(code=CLOSE_FORBIDDEN)

    # Group messages from detection.live.ChannelPublisher ("analysis.<kind>").

    async def _relay(self, kind: str, event: dict[str, Any]) -> None:
        if not self.group:
            return  # refused meanwhile; a late message must not leak
        payload = {k: v for k, v in event.items() if k != "type"}
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
