"""The access re-check, batched (detection/live/recheck.py: `AccessBatch`, `allowed_now`).

The sockets of a process whose re-checks fall due together are checked in one database hop
(a few queries for all of them), and exactly the sockets that lost access close, with the
code and log line of a socket that checked alone. tests/live/test_consumers.py checks each
reason to close (logout, deletion, deactivation, a new password, a rotated key, revoked
access) on one socket; this file checks the batch.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.models import User
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from cameras.models import Camera
from detection.live import consumers, recheck
from tests.live.test_consumers import closed_with, connect
from tests.support.factories import AnalysisFactory, CameraFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

# Queries of one batch, whatever its size: sessions, users, analyses' cameras, operators,
# cameras that exist, shares to users, shares to groups.
BATCH_QUERIES = 7


async def test_it_rechecks_a_process_s_sockets_in_one_hop_and_closes_those_that_lost_access(
    monkeypatch, caplog
):
    # Due 4 s after connecting, read together within 2 s: the six sockets connect in less.
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 4.0)
    monkeypatch.setattr(consumers, "RECHECK_BATCH_SECONDS", 2.0)
    hops: list[tuple[int, int]] = []  # per database hop: sockets checked, queries run
    check = recheck.allowed_now

    def counted(checks):
        with CaptureQueriesContext(connection) as queries:
            answer = check(checks)
        hops.append((len(checks), len(queries)))
        return answer

    monkeypatch.setattr(recheck, "allowed_now", counted)

    def world():
        names = ("keeps", "revoked", "deactivated", "partly")
        users = {name: UserFactory(username=name) for name in names}
        yard = CameraFactory(viewers=list(users.values()))
        gate = CameraFactory(viewers=[users["keeps"], users["partly"]])
        return users, AnalysisFactory(camera=yard).pk, AnalysisFactory(camera=gate).pk

    users, yard, gate = await sync_to_async(world)()
    watching = [
        ("keeps", yard),
        ("keeps", gate),
        ("revoked", yard),
        ("deactivated", yard),
        ("partly", yard),
        ("partly", gate),
    ]
    sockets = {}
    for name, analysis_id in watching:
        ws, connected = await connect(analysis_id, users[name])
        assert connected and (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
        sockets[name, analysis_id] = ws

    def change_access() -> None:
        Camera.objects.get(analyses__pk=yard).viewers.remove(users["revoked"])
        User.objects.filter(pk=users["deactivated"].pk).update(is_active=False)
        Camera.objects.get(analyses__pk=gate).viewers.remove(users["partly"])

    lost = {("revoked", yard), ("deactivated", yard), ("partly", gate)}
    with caplog.at_level("INFO", logger="detection.live.consumers"):
        await sync_to_async(change_access)()
        codes = await asyncio.gather(*(closed_with(sockets[key], 10) for key in lost))
    assert codes == [consumers.CLOSE_FORBIDDEN] * len(lost)
    # The others were checked in the same hop and stay open.
    assert hops and sum(n for n, _ in hops) == len(sockets), hops
    for key in set(sockets) - lost:
        assert await sockets[key].receive_nothing(timeout=0.2), key
        await sockets[key].disconnect()
    # The log line of a socket that checked alone, once per socket closed.
    logged = {(r.args[0], r.args[1]) for r in caplog.records if "lost access" in r.getMessage()}
    assert logged == {(users[name].pk, analysis_id) for name, analysis_id in lost}
    # One hop for the six: the sessions, the users, then the access rule for every pair at
    # once (each socket alone: four queries on a connection of its own).
    assert len(hops) == 1 and hops[0][1] <= BATCH_QUERIES, hops


@pytest.mark.parametrize(
    ("error", "code", "level"),
    [
        (RuntimeError("a bug in the re-check"), consumers.CLOSE_INTERNAL_ERROR, "ERROR"),
        (DatabaseError("the database went away"), consumers.CLOSE_UNAVAILABLE, "WARNING"),
    ],
)
async def test_it_closes_every_socket_of_a_batch_whose_read_fails_and_logs_it(
    viewer, monkeypatch, caplog, error, code, level
):
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.5)

    def broken(checks):
        raise error

    monkeypatch.setattr(recheck, "allowed_now", broken)
    analysis_id = (await sync_to_async(AnalysisFactory)(camera__viewers=[viewer])).pk
    with caplog.at_level("WARNING", logger="detection.live.consumers"):
        sockets = [(await connect(analysis_id, viewer))[0] for _ in range(2)]
        for ws in sockets:
            assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
        # Never silently: each socket closes, and says why.
        assert await asyncio.gather(*(closed_with(ws, 10) for ws in sockets)) == [code, code]
    records = [r for r in caplog.records if r.levelname == level]
    assert len(records) == 2 and all(f"analysis {analysis_id}" in r.getMessage() for r in records)
    if level == "ERROR":
        assert all(r.exc_info for r in records)


async def test_it_leaves_a_socket_closed_while_it_waits_out_of_its_batch(monkeypatch):
    read: list[list[tuple]] = []

    def allowed_now(checks):
        read.append(list(checks))
        return [f"user of {key}" for _, key, _ in checks]

    monkeypatch.setattr(recheck, "allowed_now", allowed_now)
    tasks = [
        asyncio.create_task(recheck.AccessBatch.check((None, key, 1), window=0.2)) for key in "abc"
    ]
    await asyncio.sleep(0.05)
    tasks[1].cancel()  # its socket closed
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert read == [[(None, "a", 1), (None, "c", 1)]]
    assert results[0] == "user of a" and results[2] == "user of c"
    assert isinstance(results[1], asyncio.CancelledError)
    # A re-check due later makes a batch of its own.
    assert await recheck.AccessBatch.check((None, "d", 1), window=0.2) == "user of d"
    assert read[1:] == [[(None, "d", 1)]]


class LookupBackend(BaseBackend):
    """A backend of its own (not ModelBackend): its `get_user` is asked id by id."""

    asked: list[int] = []

    def get_user(self, user_id):
        LookupBackend.asked.append(user_id)
        return User.objects.filter(pk=user_id).first()


def test_it_rechecks_other_session_stores_and_backends_with_their_own_lookups(settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    backend = f"{__name__}.LookupBackend"
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, backend]
    from django.contrib.sessions.backends.cache import SessionStore

    user = UserFactory()
    analysis_id = AnalysisFactory(camera__viewers=[user]).pk
    session = SessionStore()
    session.update(
        {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: backend,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    )
    session.save()
    check = (user, session.session_key, analysis_id)
    LookupBackend.asked.clear()

    (current,) = recheck.allowed_now([check])
    assert current == user and LookupBackend.asked == [user.pk]
    # Still the whole rule: an inactive user (any backend), then a logged-out session.
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert recheck.allowed_now([check]) == [None]
    User.objects.filter(pk=user.pk).update(is_active=True)
    session.delete()
    assert recheck.allowed_now([check]) == [None]


async def test_it_fails_every_socket_of_a_batch_answered_wrongly_rather_than_strand_it(
    monkeypatch,
):
    # A bug that answers fewer sockets than were asked must end each re-check (the socket
    # then logs it and closes with 1011), not leave some waiting for ever.
    monkeypatch.setattr(recheck, "allowed_now", lambda checks: ["only one"])
    results = await asyncio.wait_for(
        asyncio.gather(
            *(recheck.AccessBatch.check((None, key, 1), window=0.05) for key in "ab"),
            return_exceptions=True,
        ),
        timeout=5,
    )
    assert results[0] == "only one" and isinstance(results[1], ValueError)
