"""Create the first superuser on a fresh install, with a random password shown once."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

PASSWORD_ENV = "DJANGO_SUPERUSER_PASSWORD"


class Command(BaseCommand):
    help = (
        "Create a superuser if none exists. The password comes from "
        f"{PASSWORD_ENV} or is generated and printed once. Safe to run repeatedly."
    )

    # `migrate` has run them just before (make run); they would only repeat its warnings.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="default: admin")
        parser.add_argument("--email", default="", help="optional e-mail address")

    def handle(self, *args: Any, username: str, email: str, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            existing = User.objects.filter(is_superuser=True).order_by("pk").first()
            if existing is not None:
                self.stdout.write(
                    f"A superuser already exists ({existing.get_username()}); nothing to do."
                )
                return
            if User.objects.filter(**{User.USERNAME_FIELD: username}).exists():
                raise CommandError(
                    f"User {username!r} exists but is not a superuser; "
                    "promote it in the admin or pass another --username."
                )

            from_env = os.environ.get(PASSWORD_ENV) or None
            # 16 random bytes, URL-safe: strong, and easy to copy from a terminal.
            password = from_env or secrets.token_urlsafe(16)
            user = User(**{User.USERNAME_FIELD: username}, email=email)
            if from_env is not None:
                try:
                    validate_password(from_env, user)
                except ValidationError as exc:
                    raise CommandError(
                        f"{PASSWORD_ENV} is rejected: {' '.join(exc.messages)}"
                    ) from exc
            User.objects.create_superuser(
                **{User.USERNAME_FIELD: username}, email=email, password=password
            )

        if from_env is not None:
            self.stdout.write(
                f"Created superuser {username!r} with the password from {PASSWORD_ENV}."
            )
        else:
            # Printed exactly once: it is stored only as a hash.
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created superuser {username!r} with password: {password}\n"
                    "Note it now; it is not shown again (change it under /admin/)."
                )
            )
