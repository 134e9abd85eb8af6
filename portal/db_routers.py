"""Keep the embedded channel layer's tables, and only those, in the `channels` database."""

from __future__ import annotations

from typing import Any

from channels_lite.router import ChannelsRouter


class ChannelsDatabaseRouter(ChannelsRouter):
    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        if app_label in self.route_app_labels:
            return db == self.database
        # channels-lite's own router lets every other app migrate into its database too.
        return False if db == self.database else None
