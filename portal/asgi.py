"""ASGI entry point: Django for HTTP, Channels for websockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Set up Django (apps registry, settings) before anything imports models through
# channels' auth middleware or the consumers.
try:
    django_asgi_app = get_asgi_application()
except ImproperlyConfigured as error:
    # A bad environment stops the server with one line naming the variable (as manage.py
    # does), instead of a traceback from inside daphne's import machinery.
    raise SystemExit(f"configuration error: {error}") from None

from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import WebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import re_path

from detection.live.routing import websocket_urlpatterns as detection_routes
from portal import daphne_bodies
from portal.origins import OriginValidator

daphne_bodies.install()  # request bodies of any size cost daphne bounded memory


class UnknownPathConsumer(WebsocketConsumer):
    """Closes sockets that match no route.

    URLRouter raises ValueError on an unmatched path, which the server turns into an
    abrupt 500-style failure; refusing the handshake is the websocket's 404.
    """

    def connect(self) -> None:
        self.close()


# The app's routes first; the catch-all stays last.
websocket_urlpatterns = [
    *detection_routes,
    re_path(r"", UnknownPathConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Django's CSRF origin rule (scheme, host and port), then the session's user.
        "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
