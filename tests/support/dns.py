"""Name resolution answered from a table, for the outbound address rule's tests."""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from ipaddress import ip_address


def resolve_as(monkeypatch, table: Mapping[str, Sequence[str]]) -> list[str]:
    """Answer DNS lookups from `table` (name -> addresses); other names do not resolve.

    Returns the list of names looked up, in order. The table is read at each lookup, so a
    test may change it to play a DNS answer that changes (a rebinding).
    """
    asked: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        asked.append(host)
        try:
            addresses = [str(ip_address(host))]  # numeric hosts need no DNS, as for real
        except ValueError:
            if host not in table:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            addresses = list(table[host])
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, port or 0, 0, 0) if ":" in address else (address, port or 0),
            )
            for address in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked
