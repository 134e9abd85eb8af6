"""The embedded channel layer: channels-lite's SQLite layer, made to serve a few hundred sockets.

Upstream (channels-lite 0.4.0) one daphne process polls its messages one row at a time (a
SELECT and an UPDATE, each a hop to the thread that also runs every consumer's database
calls), and a group_send counts the pending messages once per member. With 200 sockets
on one analysis at 1 frame/s that is ~70-300 messages/s received (400/s needed) and
250-450 ms per group_send in the worker: viewers starve (tests/live/test_live_load.py). Here:

- a poll claims up to CLAIM_BATCH messages in one IMMEDIATE transaction and hands them out
  from memory (delivery stays at most once: a claimed message is marked delivered);
- the claim runs in the default thread pool, not behind the consumers' database calls;
- a group_send counts pending messages once per process (all of a process's channels share
  one non-local name, so upstream counted the same rows once per member).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from channels_lite.layers import ChannelEmpty
from channels_lite.layers.core import SQLiteChannelLayer
from channels_lite.models import Event
from django.db import transaction
from django.utils import timezone

CLAIM_BATCH = 200


class BatchedSQLiteChannelLayer(SQLiteChannelLayer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._claimed: dict[str, deque[tuple[str, dict[str, Any]]]] = defaultdict(deque)

    async def _receive_single_from_db(self, channel: str) -> tuple[str, dict[str, Any]]:
        claimed = self._claimed[channel]
        if not claimed:
            for data in await self._claim(channel):
                message = self.deserialize(data)
                claimed.append((self._extract_message_channel(message, channel), message))
        if not claimed:
            raise ChannelEmpty()
        return claimed.popleft()

    @sync_to_async(thread_sensitive=False)
    def _claim(self, channel: str) -> list[bytes]:
        with transaction.atomic(using=self.database):
            rows = list(
                Event.objects.using(self.database)
                .filter(delivered=False, channel_name=channel, expires_at__gte=timezone.now())
                .order_by("expires_at", "id")
                .values_list("id", "data")[:CLAIM_BATCH]
            )
            if rows:
                Event.objects.using(self.database).filter(id__in=[pk for pk, _ in rows]).update(
                    delivered=True
                )
        return [data for _, data in rows]

    async def _prepare_group_send_events(
        self, channels: list[str], message: dict[str, Any]
    ) -> AsyncIterator[tuple[str, bytes]]:
        pending: dict[str, int] = {}
        for channel in channels:
            if "!" in channel:
                to_send = {**message, "__asgi_channel__": channel}
                name = self.non_local_name(channel)
            else:
                to_send, name = message, channel
            if self.enforce_capacity:
                if name not in pending:
                    pending[name] = await self._get_channel_pending_count(name)
                if pending[name] >= self.get_capacity(channel):
                    continue  # full: dropped, as the channel layer spec allows
            yield name, self.serialize(to_send)
