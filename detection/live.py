"""Publishing what the worker stores to live pages, through the channel layer.

Best effort by design: the database is the record, and a page that reconnects asks for
what it missed. So a publishing failure (no layer, Redis down, a full channel) is logged,
rate-limited, and never stops scoring or storing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)


def group_name(analysis_id: int) -> str:
    return f"analysis-{analysis_id}"


def incident_message(incident: Any) -> dict[str, Any]:
    """An incident as live pages, webhooks and the acknowledge API all see it."""
    acknowledged_by = incident.acknowledged_by if incident.acknowledged_by_id else None
    return {
        "id": incident.pk,
        "start_time_s": incident.start_time_s,
        "end_time_s": incident.end_time_s,
        "peak_score": incident.peak_score,
        "peak_time_s": incident.peak_time_s,
        "open": incident.is_open,
        "acknowledged_by": acknowledged_by.get_username() if acknowledged_by else None,
        "acknowledged_at": incident.acknowledged_at.isoformat()
        if incident.acknowledged_at
        else None,
    }


class Publisher(Protocol):
    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None: ...


class NullPublisher:
    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None:
        return None


class ChannelPublisher:
    """Sends `{"type": "analysis.<kind>", ...}` to the analysis's group.

    The message type maps to the consumer's `analysis_<kind>` handler (Channels replaces
    the dot with an underscore).
    """

    def __init__(self) -> None:
        self._last_error_log = 0.0

    def publish(self, analysis_id: int, kind: str, payload: dict[str, Any]) -> None:
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        try:
            layer = get_channel_layer()
            if layer is None:
                return
            async_to_sync(layer.group_send)(
                group_name(analysis_id), {"type": f"analysis.{kind}", **payload}
            )
        except Exception as exc:  # noqa: BLE001 - best effort: never stop the worker
            now = time.monotonic()
            if now - self._last_error_log > 30:
                self._last_error_log = now
                log.warning("publishing to live pages failed (scores are stored): %s", exc)
