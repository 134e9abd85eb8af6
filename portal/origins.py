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

Host and scheme come from Django's own `HttpRequest.get_host()` and `is_secure()`, so the
two checks cannot drift apart. A handshake without an Origin is refused: browsers always
send one. Settings are read on every handshake (they are cheap to read, and tests
override them).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.utils.http import is_same_domain

log = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


def handshake_meta(scope: Scope) -> dict[str, str]:
    """The handshake's headers and server address as ASGIRequest puts them in META."""
    server = scope.get("server") or ("unknown", "0")
    meta = {"SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1])}
    headers: defaultdict[str, list[str]] = defaultdict(list)
    for name, value in scope.get("headers", []):
        headers["HTTP_" + name.decode("latin1").upper().replace("-", "_")].append(
            value.decode("latin1")
        )
    # A repeated header is joined, as Django does: two Origins never equal a valid one.
    meta.update({key: ",".join(values) for key, values in headers.items()})
    return meta


class HandshakeRequest(HttpRequest):
    """A websocket handshake seen as Django's request, for `get_host()` and `is_secure()`."""

    def __init__(self, scope: Scope) -> None:
        super().__init__()
        self.META = handshake_meta(scope)
        self._socket_scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"

    def _get_scheme(self) -> str:
        # Used unless SECURE_PROXY_SSL_HEADER is set and its header present.
        return self._socket_scheme


def own_origin(request: HttpRequest) -> str | None:
    """`scheme://host[:port]` of the handshake, or None when the host is not allowed."""
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    return f"{'https' if request.is_secure() else 'http'}://{host}"


def trusted(origin: str, trusted_origins: Iterable[str]) -> bool:
    """Whether CSRF_TRUSTED_ORIGINS lists `origin`, exactly or as `scheme://*.domain`."""
    patterns = list(trusted_origins)
    if origin in {p for p in patterns if "*" not in p}:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        pattern.scheme == parsed.scheme
        and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in (urlsplit(p) for p in patterns if "*" in p)
    )


def origin_allowed(request: HttpRequest) -> bool:
    origin = request.META.get("HTTP_ORIGIN")
    if not origin:
        return False
    return origin == own_origin(request) or trusted(origin, settings.CSRF_TRUSTED_ORIGINS)


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
