"""ASGI entry point: Django for HTTP, Channels for websockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Set up Django (apps registry, settings) before anything imports models through
# channels' auth middleware or the consumers.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.generic.websocket import WebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from detection.routing import websocket_urlpatterns as detection_routes  # noqa: E402


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
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
