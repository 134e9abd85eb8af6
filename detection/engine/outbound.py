"""HTTP connections to addresses that were checked, not to a fresh DNS answer.

    target = netpolicy.parse_url(url, ("http", "https"), "prompt assistant URL")
    addresses = policy.check(target)                 # resolve once, check every address
    connection = pinned_connection(target, addresses, timeout=10.0)

The connection's `host` stays the name the operator wrote (Host header, TLS SNI and the
certificate check are about the name), but the socket connects to one of the checked
addresses itself: a DNS answer that changes between the check and the connect (rebinding)
cannot move the request. http.client never follows redirects; callers treat 3xx as a
failure. docs/security.md ("Outbound requests: the trust model") is the rule in prose.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .netpolicy import IPAddress, Target


def _connect_to(addresses: tuple[IPAddress, ...], timeout: float) -> Callable[..., socket.socket]:
    """A stand-in for `socket.create_connection` that tries `addresses` in turn, as given.

    (`socket.create_connection` would call getaddrinfo, even for an IP literal.)
    """

    def create_connection(
        address: tuple[str, int], timeout_: object = None, source_address: Any = None
    ) -> socket.socket:
        error: OSError = OSError("no address to connect to")
        for ip in addresses:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout_ if isinstance(timeout_, int | float) else timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect((str(ip), address[1]))
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    return create_connection


def pinned_connection(
    target: Target, addresses: tuple[IPAddress, ...], *, timeout: float
) -> http.client.HTTPConnection:
    """An http(s) connection to `target` that connects only to `addresses`.

    `timeout` bounds the connect and each read on the socket, not the whole exchange.
    """
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    connection._create_connection = _connect_to(addresses, timeout)  # type: ignore[attr-defined]
    return connection
