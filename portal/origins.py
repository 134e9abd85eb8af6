"""The websocket handshake's Origin check: Django's CSRF origin rule, port included.

channels' AllowedHostsOriginValidator compares only the Origin's host name with
ALLOWED_HOSTS, so a page on any port of an allowed host (another local service, a dev
server left running) could open the live socket with the visitor's cookies. Here a
handshake is accepted exactly when Django's CsrfViewMiddleware would accept a POST with
that Origin (`_origin_verified`, Django 5.2):

- the Origin equals the handshake's own `scheme://host[:port]`: the Host header (or
  X-Forwarded-Host with USE_X_FORWARDED_HOST), which must be in ALLOWED_HOSTS, and the
  socket's scheme (ws -> http, wss -> https) or, behind a TLS-terminating proxy such as
  deploy/nginx/clipwatch.conf, SECURE_PROXY_SSL_HEADER (X-Forwarded-Proto);
- or it is in CSRF_TRUSTED_ORIGINS, exactly or, for an entry with `*`, as a subdomain
  with the same scheme and port.

The check is Django's own method, on the handshake seen as an `ASGIRequest`, so the two
checks cannot drift apart (`_origin_verified` is private: Django is pinned below 5.3, and
tests/live/test_consumers.py pins the behaviour). A handshake without an Origin is
refused: browsers always send one. Settings are read on every handshake (they are cheap
to read, and tests override them).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.security.websocket import WebsocketDenier
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from django.middleware.csrf import CsrfViewMiddleware

log = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


class HandshakeRequest(ASGIRequest):
    """A websocket handshake seen as Django's request (META built by Django from the scope),
    for `get_host()`, `is_secure()` and the CSRF middleware's origin check."""

    def __init__(self, scope: Scope) -> None:
        super().__init__({**scope, "method": "GET"}, io.BytesIO())

    def _get_scheme(self) -> str:
        # Used unless SECURE_PROXY_SSL_HEADER is set and its header present; ASGIRequest's
        # own would answer "ws" or "wss".
        return "https" if self.scope.get("scheme") in ("wss", "https") else "http"


def own_origin(request: HttpRequest) -> str | None:
    """`scheme://host[:port]` of the handshake, or None when the host is not allowed."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    return f"{'https' if request.is_secure() else 'http'}://{host}"


def origin_allowed(request: HttpRequest) -> bool:
    """Django's own rule (CsrfViewMiddleware._origin_verified), built afresh per handshake
    so that settings are read as they are now; a handshake without an Origin is refused."""
    if not request.META.get("HTTP_ORIGIN"):
        return False
    return CsrfViewMiddleware(lambda request: None)._origin_verified(request)


class OriginValidator:
    """ASGI middleware for websockets: refuses the handshake of a foreign Origin."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application
        self.denier = WebsocketDenier.as_asgi()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("OriginValidator only guards websocket connections")
        request = HandshakeRequest(scope)
        if origin_allowed(request):
            return await self.application(scope, receive, send)
        # WARNING, as Django logs a refused CSRF origin: a misconfigured proxy or
        # CSRF_TRUSTED_ORIGINS shows up here, and so does a cross-site page.
        client = scope.get("client") or ("?", 0)
        log.warning(
            "websocket refused: Origin %r is not %s nor in CSRF_TRUSTED_ORIGINS (%s, from %s:%s)",
            request.META.get("HTTP_ORIGIN"),
            own_origin(request) or "this site (Host not allowed)",
            scope.get("path"),
            client[0],
            client[1],
        )
        return await self.denier(scope, receive, send)
