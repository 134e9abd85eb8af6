"""WSGI entry point, for plain-HTTP deployments; websockets need portal.asgi."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

try:
    application = get_wsgi_application()
except ImproperlyConfigured as error:
    raise SystemExit(f"configuration error: {error}") from None
