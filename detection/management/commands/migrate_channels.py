"""`manage.py migrate_channels`: create the embedded channel layer's tables, if it is used.

The embedded layer (channels-lite) keeps its messages in their own SQLite database
(`CHANNELS_DB_PATH`), which `migrate` alone does not touch. With Redis there is nothing to do.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Migrate the embedded channel layer's database (no-op with Redis)."

    def handle(self, *args: Any, **options: Any) -> None:
        if "channels" not in settings.DATABASES:
            self.stdout.write(f"channel layer: {settings.CHANNELS_LAYER}; nothing to migrate")
            return
        call_command(
            "migrate", database="channels", interactive=False, verbosity=options["verbosity"]
        )
