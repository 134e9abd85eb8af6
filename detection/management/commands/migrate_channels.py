"""`manage.py migrate_channels`: create the embedded channel layer's tables, if it is used.

The embedded layer (channels-lite) keeps its messages in their own SQLite database
(`CHANNELS_DB_PATH`), which `migrate` alone does not touch. With Redis there is nothing to do.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connections
from django.db.migrations.executor import MigrationExecutor


class Command(BaseCommand):
    help = "Migrate the embedded channel layer's database (no-op with Redis)."
    # `migrate` has run them just before; they would only repeat its warnings.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        if "channels" not in settings.DATABASES:
            self.stdout.write(f"channel layer: {settings.CHANNELS_LAYER}; nothing to migrate")
            return
        executor = MigrationExecutor(connections["channels"])
        if not executor.migration_plan(executor.loader.graph.leaf_nodes()):
            # One line, not migrate's list of every app with nothing to apply.
            self.stdout.write("channel layer: database up to date")
            return
        call_command(
            "migrate",
            database="channels",
            interactive=False,
            verbosity=options["verbosity"],
            skip_checks=True,
        )
