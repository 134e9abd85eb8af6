"""Logging a user in, the one way: a real session row, as after a real login.

- `login(client, user)`: `client` logged in as `user` (left anonymous when `user` is None).
- `client_for(user)`: a fresh test client logged in as `user`.
- `session_key(user)`: the session cookie's value (what a browser stores).
- `session_cookie(user)`: the `Cookie` header a browser sends: `sessionid=<key>`.
"""

from __future__ import annotations

from django.conf import settings
from django.test import Client


def login(client: Client, user) -> Client:
    if user is not None:
        client.force_login(user)
    return client


def client_for(user) -> Client:
    return login(Client(), user)


def session_key(user) -> str:
    return client_for(user).cookies[settings.SESSION_COOKIE_NAME].value


def session_cookie(user) -> str:
    return f"{settings.SESSION_COOKIE_NAME}={session_key(user)}"
