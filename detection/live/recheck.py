"""Whether the live sockets of a process may still watch: their re-check, batched.

Every socket re-checks, every RECHECK_SECONDS (detection/live/consumers.py), that its
session still authenticates its user the way `django.contrib.auth.get_user` decides (logged
out, user deleted or deactivated, password changed: the session's auth hash,
SECRET_KEY_FALLBACKS included) and that the access rule still lets the user see the
analysis. At 2,000 sockets that is 133 re-checks a second in each process's one database
thread, so the re-checks that fall due together are read together (`AccessBatch`), and
`allowed_now` answers any number of them in a few queries: sessions by key, users by id,
the access rule for all the (user, analysis) pairs (docs/performance.md, "1,000 viewers").
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from cameras.access import in_chunks
from detection.access import visible_analysis_pairs

# A socket's re-check: its user as last checked, its session key, the analysis it watches.
Check = tuple[Any, str | None, int]


def session_hash_verified(session_hash: str | None, user: Any) -> bool:
    """Whether the session was made with the user's current password, as `get_user` checks.

    The hash also depends on SECRET_KEY; one made with a key in SECRET_KEY_FALLBACKS still
    verifies (a key rotation done right logs nobody out). `get_user` then cycles the
    session's key on the next page request, which this socket sees as a logout.
    """
    if not hasattr(user, "get_session_auth_hash"):
        return True  # a user model without passwords: get_user verifies nothing either
    if not session_hash:
        return False
    if constant_time_compare(session_hash, user.get_session_auth_hash()):
        return True
    return any(
        constant_time_compare(session_hash, fallback)
        for fallback in user.get_session_auth_fallback_hash()
    )


def stored_sessions(keys: set[str]) -> dict[str, dict[str, Any]]:
    """The data each session key holds as stored now (absent: gone or expired).

    The sockets' own copies were read at their handshakes, so this reads the store again.
    The database backend (the default) is read in one query for all the keys, with what its
    `load` checks (not expired); any other backend is asked key by key, by its own `load`.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if store.load is not DatabaseSessionStore.load:
        return {key: data for key in keys if (data := store(key).load())}
    decoder = store()
    found: dict[str, dict[str, Any]] = {}
    for chunk in in_chunks(keys):
        rows = store.get_model_class().objects.filter(
            session_key__in=chunk, expire_date__gt=timezone.now()
        )
        for key, data in rows.values_list("session_key", "session_data"):
            found[key] = decoder.decode(data)  # a tampered one decodes to {}
    return found


def session_claim(data: dict[str, Any], user_id: Any) -> tuple[str, Any] | None:
    """(backend path, user id) when the session data signs in this very user, else None.

    Another user on the same session key would need a login without Django's key cycling.
    """
    try:
        claimed = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
        backend_path = data[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if claimed != user_id or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    return backend_path, claimed


def backend_users(backend_path: str, ids: set[Any]) -> dict[Any, Any]:
    """What the backend's `get_user` returns for each id, where it returns a user.

    ModelBackend's (and that of any subclass keeping it) in one query for all the ids: the
    user by primary key, when `user_can_authenticate` (ModelBackend refuses inactive users).
    Any other backend's `get_user`, id by id.
    """
    backend = load_backend(backend_path)
    if type(backend).get_user is not ModelBackend.get_user:
        return {pk: user for pk in ids if (user := backend.get_user(pk)) is not None}
    manager = get_user_model()._default_manager
    found: dict[Any, Any] = {}
    for chunk in in_chunks(ids):
        found.update(manager.in_bulk(chunk))
    return {pk: user for pk, user in found.items() if backend.user_can_authenticate(user)}


def allowed_now(checks: Sequence[Check]) -> list[Any | None]:
    """For each socket, its user as stored now when its session and the access rule still
    allow it, else None: in a few queries for all of them, whatever their number.

    `django.contrib.auth.get_user`'s rule, without its writes (the next page request
    flushes or cycles the session): the session exists and has not expired, names this user
    and a configured backend, the backend still returns the user (not deleted; ModelBackend
    also refuses inactive users, and so does this for any backend), and the session's auth
    hash matches the user's password. Then the per-camera rule, for all the (user,
    analysis) pairs at once (`visible_analysis_pairs`).
    """
    sessions = stored_sessions({key for _, key, _ in checks if key})
    claims = [
        session_claim(sessions[key], user.pk) if key in sessions else None
        for user, key, _ in checks
    ]
    wanted: defaultdict[str, set[Any]] = defaultdict(set)
    for claim in claims:
        if claim is not None:
            wanted[claim[0]].add(claim[1])
    users = {
        (path, pk): user
        for path, ids in wanted.items()
        for pk, user in backend_users(path, ids).items()
    }
    current: list[Any | None] = []
    for (_, key, _), claim in zip(checks, claims, strict=True):
        user = users.get(claim) if claim is not None else None
        if user is None or not user.is_active:
            current.append(None)
        else:
            verified = session_hash_verified(sessions[key].get(HASH_SESSION_KEY), user)
            current.append(user if verified else None)
    visible = visible_analysis_pairs(
        (user, analysis_id)
        for user, (_, _, analysis_id) in zip(current, checks, strict=True)
        if user is not None
    )
    return [
        user if user is not None and (user.pk, analysis_id) in visible else None
        for user, (_, _, analysis_id) in zip(current, checks, strict=True)
    ]


class AccessBatch:
    """The access re-checks of a process's sockets, read together in one database hop.

    Each socket used to re-check its session, user and access in a hop of its own to the
    one thread that runs the process's database work (and its handshakes): at 2,000 sockets
    that was 133 hops a second, each four queries on a new connection (conn_max_age 0). Now
    the first socket whose re-check falls due opens a batch, those that fall due within
    `window` seconds join it, and one `allowed_now` answers them all. A socket closed
    meanwhile is left out; a failed read fails every socket of the batch, each of which
    closes as when it read alone (UNAVAILABLE_ERRORS: 4503; anything else: logged, 1011).
    """

    batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AccessBatch] = (
        weakref.WeakKeyDictionary()
    )
    reading: set[asyncio.Task[None]] = set()  # the loop holds tasks only weakly

    def __init__(self) -> None:
        self.waiting: list[tuple[Check, asyncio.Future[Any]]] = []

    @classmethod
    async def check(cls, check: Check, window: float) -> Any | None:
        """The socket's user as stored now, or None once it may no longer watch; read with
        the re-checks of this process that fall due within `window` seconds of the first."""
        loop = asyncio.get_running_loop()
        batch = cls.batches.get(loop)
        if batch is None:
            batch = cls.batches[loop] = cls()
            task = loop.create_task(batch._read(loop, window))
            cls.reading.add(task)
            task.add_done_callback(cls.reading.discard)
        answer: asyncio.Future[Any] = loop.create_future()
        batch.waiting.append((check, answer))
        return await answer

    async def _read(self, loop: asyncio.AbstractEventLoop, window: float) -> None:
        waiting = self.waiting
        try:
            await asyncio.sleep(window)
            self._close(loop)
            waiting = [(c, f) for c, f in waiting if not f.done()]  # the sockets still open
            if not waiting:
                return
            users = await database_sync_to_async(allowed_now)([c for c, _ in waiting])
            for (_, answer), user in zip(waiting, users, strict=True):
                if not answer.done():
                    answer.set_result(user)
        except asyncio.CancelledError:
            self._close(loop)
            for _, answer in waiting:
                answer.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (handed to each socket, which decides)
            # Whatever went wrong, no socket is left waiting for ever.
            self._close(loop)
            for _, answer in waiting:
                if not answer.done():
                    answer.set_exception(exc)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Later re-checks make the next batch."""
        if self.batches.get(loop) is self:
            del self.batches[loop]
