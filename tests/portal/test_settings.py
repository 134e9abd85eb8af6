"""Settings come from the environment at import time, so most of these tests import
portal.settings (or run manage.py) in a subprocess with a controlled environment."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal import env
from portal import settings as settings_module
from tests.support import ROOT
from tests.support.model import cache_default_weights
from tests.support.processes import SETTINGS_PREFIXES
from tests.support.services import NO_POSTGRES_URL, NO_REDIS_URL, POSTGRES_URL, REDIS_URL


def _clean_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    # Keep subprocesses off the repository's var/ database.
    base["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    base["MEDIA_ROOT"] = str(tmp_path / "media")
    base.update(overrides)
    return base


def _run(args: list[str], env_vars: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_DUMP = """
import json
from django.conf import settings
import django
django.setup()
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "DB": {k: settings.DATABASES["default"][k] for k in ("ENGINE", "OPTIONS")},
    "LAYER": settings.CHANNEL_LAYERS["default"],
    "VIDEO_DIRS": [str(p) for p in settings.DETECTION_VIDEO_DIRS],
    "MEDIA_ROOT": str(settings.MEDIA_ROOT),
    "LOGIT_SCALE": settings.DETECTION_LOGIT_SCALE,
    "CAMERA_NETWORKS": [str(n) for n in settings.DETECTION_CAMERA_ALLOWED_NETWORKS],
    "WEBHOOK_NETWORKS": [str(n) for n in settings.DETECTION_WEBHOOK_ALLOWED_NETWORKS],
    "BATCH": settings.DETECTION_BATCH_SIZE,
    "DEVICE": settings.DETECTION_DEVICE,
    "CACHE_DIR": None if settings.DETECTION_CACHE_DIR is None
        else str(settings.DETECTION_CACHE_DIR),
    "INSTALLED_APPS": settings.INSTALLED_APPS,
}, default=str))
"""


def _settings(tmp_path: Path, **overrides: str) -> dict[str, object]:
    result = _run(
        ["-c", _DUMP], _clean_env(tmp_path, DJANGO_SETTINGS_MODULE="portal.settings", **overrides)
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _settings_error(tmp_path: Path, **overrides: str) -> str:
    result = _run(["-c", "import portal.settings"], _clean_env(tmp_path, **overrides))
    assert result.returncode != 0, "settings imported although they should have been refused"
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured"), result.stderr
    return last_line


# --- env parsers ----------------------------------------------------------------------


def test_it_parses_booleans_and_names_the_variable_on_garbage(monkeypatch):
    monkeypatch.setenv("X_FLAG", "Yes")
    assert env.get_bool("X_FLAG", False) is True
    monkeypatch.setenv("X_FLAG", "off")
    assert env.get_bool("X_FLAG", True) is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match=r"X_FLAG='maybe'.*expected a boolean"):
        env.get_bool("X_FLAG", True)


def test_it_treats_unset_and_blank_variables_as_the_default(monkeypatch):
    monkeypatch.delenv("X_NUM", raising=False)
    assert env.get_int("X_NUM", 7) == 7
    monkeypatch.setenv("X_NUM", "  ")
    assert env.get_int("X_NUM", 7) == 7
    assert env.get_list("X_NUM", ["a"]) == ["a"]
    assert env.get_optional_str("X_NUM") is None


def test_it_rejects_non_integers_and_values_below_the_minimum(monkeypatch):
    monkeypatch.setenv("X_NUM", "12")
    assert env.get_int("X_NUM", 1, min=1) == 12
    monkeypatch.setenv("X_NUM", "1.5")
    with pytest.raises(ImproperlyConfigured, match=r"X_NUM='1.5'.*expected an integer"):
        env.get_int("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "0")
    with pytest.raises(ImproperlyConfigured, match=r"X_NUM='0'.*integer >= 1"):
        env.get_int("X_NUM", 1, min=1)


@pytest.mark.parametrize("raw", ["0", "-3", "nan", "inf", "lots"])
def test_it_rejects_floats_that_are_not_finite_and_positive(monkeypatch, raw):
    monkeypatch.setenv("X_SCALE", raw)
    with pytest.raises(ImproperlyConfigured, match=rf"X_SCALE='{raw}'.*finite number > 0"):
        env.get_float("X_SCALE", 1.0, gt=0)


def test_it_checks_strings_against_choices_and_patterns(monkeypatch):
    monkeypatch.setenv("X_MODE", "fast")
    with pytest.raises(ImproperlyConfigured, match=r"X_MODE='fast'.*one of a, b"):
        env.get_str("X_MODE", "a", choices=("b", "a"))
    with pytest.raises(ImproperlyConfigured, match=r"X_MODE='fast'.*slow or quick"):
        env.get_str("X_MODE", "a", pattern=r"slow|quick", expected="slow or quick")
    monkeypatch.setenv("X_MODE", "quick")
    assert env.get_str("X_MODE", "a", pattern=r"slow|quick") == "quick"


def test_it_splits_lists_on_commas_and_refuses_an_empty_list(monkeypatch):
    monkeypatch.setenv("X_HOSTS", " a.example, ,b.example ")
    assert env.get_list("X_HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("X_HOSTS", ", ,")
    with pytest.raises(ImproperlyConfigured, match=r"X_HOSTS=', ,'.*at least one item"):
        env.get_list("X_HOSTS", [])


def test_it_splits_paths_on_colons_and_resolves_them(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("X_DIRS", f"videos:{tmp_path / 'other'}:")
    assert env.get_paths("X_DIRS", []) == [tmp_path / "videos", tmp_path / "other"]
    monkeypatch.setenv("X_DIRS", ":::")
    with pytest.raises(ImproperlyConfigured, match=r"X_DIRS=':::'.*at least one path"):
        env.get_paths("X_DIRS", [])


# --- the settings module --------------------------------------------------------------


def test_it_has_safe_development_defaults(tmp_path):
    values = _settings(tmp_path)
    assert values["DEBUG"] is True
    assert values["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert values["INSTALLED_APPS"][0] == "daphne"
    assert values["LAYER"]["BACKEND"] == "portal.channel_layer.BatchedSQLiteChannelLayer"
    assert values["BATCH"] == 16
    assert values["DEVICE"] == "auto"
    assert values["LOGIT_SCALE"] is None
    assert values["CACHE_DIR"] is None
    assert values["VIDEO_DIRS"] == [values["MEDIA_ROOT"]]


def test_it_tunes_sqlite_for_a_concurrent_worker(tmp_path):
    db = _settings(tmp_path)["DB"]
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["OPTIONS"] == {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }


def test_it_uses_redis_for_channels_when_redis_url_is_set(tmp_path):
    layer = _settings(tmp_path, REDIS_URL="redis://127.0.0.1:6379/3")["LAYER"]
    assert layer == {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # Bounded waits: redis-py would otherwise wait forever on a hung server.
            "hosts": [
                {
                    "address": "redis://127.0.0.1:6379/3",
                    "socket_connect_timeout": 2,
                    "socket_timeout": 10,
                }
            ],
            "capacity": 20_000,
            "expiry": 10,
        },
    }


def test_it_takes_the_redis_read_timeout_from_the_environment(tmp_path):
    values = _settings(tmp_path, REDIS_URL="redis://127.0.0.1:6379/3", REDIS_SOCKET_TIMEOUT="30")
    assert values["LAYER"]["CONFIG"]["hosts"][0]["socket_timeout"] == 30


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:6379/3"])
def test_it_sizes_the_layer_from_channels_capacity(tmp_path, redis_url):
    values = _settings(tmp_path, REDIS_URL=redis_url, CHANNELS_CAPACITY="50")
    assert values["LAYER"]["CONFIG"]["capacity"] == 50
    assert "CHANNELS_CAPACITY='0'" in _settings_error(tmp_path, CHANNELS_CAPACITY="0")


def test_it_uses_the_embedded_sqlite_layer_without_redis(tmp_path):
    values = _settings(tmp_path, CHANNELS_DB_PATH=str(tmp_path / "ch.sqlite3"))
    assert values["LAYER"]["BACKEND"] == "portal.channel_layer.BatchedSQLiteChannelLayer"
    assert values["LAYER"]["CONFIG"]["database"] == "channels"
    assert "channels_lite" in values["INSTALLED_APPS"]


def test_it_refuses_the_redis_layer_without_a_url(tmp_path):
    error = _settings_error(tmp_path, CHANNELS_LAYER="redis")
    assert "CHANNELS_LAYER=redis needs REDIS_URL" in error


def test_it_reads_detection_settings(tmp_path):
    values = _settings(
        tmp_path,
        DETECTION_LOGIT_SCALE="100",
        DETECTION_BATCH_SIZE="64",
        DETECTION_DEVICE="cuda:1",
        DETECTION_VIDEO_DIRS=f"{tmp_path / 'a'}:{tmp_path / 'b'}",
        DETECTION_CACHE_DIR=str(tmp_path / "weights"),
    )
    assert values["LOGIT_SCALE"] == 100.0
    assert values["BATCH"] == 64
    assert values["DEVICE"] == "cuda:1"
    assert values["VIDEO_DIRS"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert values["CACHE_DIR"] == str(tmp_path / "weights")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DETECTION_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
        ("DETECTION_DEVICE", "cuda:x", "auto, cpu, cuda or cuda:N"),
        ("DETECTION_BATCH_SIZE", "0", "integer >= 1"),
        ("DETECTION_PRECISION", "int8", "one of auto, bf16, fp16, fp32"),
        ("DETECTION_LOGIT_SCALE", "-5", "finite number > 0"),
        ("DJANGO_DEBUG", "sometimes", "a boolean"),
    ],
)
def test_it_refuses_to_start_with_a_bad_value(tmp_path, name, value, expected):
    message = _settings_error(tmp_path, **{name: value})
    assert f"{name}={value!r}" in message
    assert expected in message


def test_it_requires_a_secret_key_without_debug(tmp_path):
    message = _settings_error(tmp_path, DJANGO_DEBUG="false", DJANGO_ALLOWED_HOSTS="example.com")
    assert "DJANGO_SECRET_KEY" in message


def test_it_requires_allowed_hosts_without_debug(tmp_path):
    message = _settings_error(
        tmp_path, DJANGO_DEBUG="false", DJANGO_SECRET_KEY=secrets.token_urlsafe(50)
    )
    assert "DJANGO_ALLOWED_HOSTS" in message


@pytest.mark.parametrize(
    ("entry_point", "missing"),
    [
        (["manage.py", "check"], "DJANGO_SECRET_KEY"),
        (["manage.py", "run_detector", "--once"], "DJANGO_ALLOWED_HOSTS"),
        (
            ["-m", "daphne", "-b", "127.0.0.1", "-p", "0", "portal.asgi:application"],
            "DJANGO_SECRET_KEY",
        ),
        (
            ["-m", "daphne", "-b", "127.0.0.1", "-p", "0", "portal.asgi:application"],
            "DJANGO_ALLOWED_HOSTS",
        ),
    ],
)
def test_it_stops_each_entry_point_with_one_line_naming_the_variable(
    tmp_path, entry_point, missing
):
    production = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_ALLOWED_HOSTS": "x.org"}
    production[missing] = ""
    result = _run(entry_point, _clean_env(tmp_path, DJANGO_DEBUG="false", **production))
    assert result.returncode != 0, "it started although production settings were incomplete"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), result.stderr
    assert missing in lines[0]


def test_it_does_not_echo_a_database_url_that_may_hold_a_password(tmp_path):
    message = _settings_error(tmp_path, DATABASE_URL="mongo://user:hunter2@db/x")
    assert "DATABASE_URL is invalid" in message
    assert "hunter2" not in message


def _production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    production = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "example.com",
    }
    return _clean_env(tmp_path, **{**production, **overrides})


@pytest.mark.slow
def test_it_passes_the_deploy_checks_with_production_settings(tmp_path):
    # A deployed box has its weights (this one may have no internet: detection.W004).
    cache_default_weights(tmp_path / "hub")
    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        _production_env(tmp_path, HF_HUB_CACHE=str(tmp_path / "hub")),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


WEAK_KEYS = {
    "one character": "x",
    "short": "short",
    "repeated": "a" * 60,
    "django-insecure": "django-insecure-" + secrets.token_urlsafe(50),
    "the repository's own": settings_module._DEV_SECRET_KEY,
}


@pytest.mark.parametrize("key", WEAK_KEYS.values(), ids=WEAK_KEYS.keys())
def test_it_refuses_a_weak_secret_key_in_production(tmp_path, key):
    message = _settings_error(
        tmp_path, DJANGO_DEBUG="false", DJANGO_ALLOWED_HOSTS="example.com", DJANGO_SECRET_KEY=key
    )
    assert "DJANGO_SECRET_KEY is too weak" in message
    if len(key) > 8:  # ("x" is in any sentence)
        assert key not in message, "the key itself must not be echoed into logs"


@pytest.mark.parametrize(
    "entry_point",
    [
        ["manage.py", "check"],
        ["-m", "daphne", "-b", "127.0.0.1", "-p", "0", "portal.asgi:application"],
    ],
    ids=["manage.py check", "daphne"],
)
def test_it_stops_each_entry_point_with_one_line_for_a_weak_secret_key(tmp_path, entry_point):
    env = _production_env(tmp_path, DJANGO_SECRET_KEY="x")
    result = _run(entry_point, env)
    assert result.returncode != 0, "it started with the secret key 'x'"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), result.stderr
    assert "DJANGO_SECRET_KEY is too weak" in lines[0]


def test_it_keeps_the_development_key_while_debugging(tmp_path):
    result = _run(["manage.py", "check", "--tag", "security"], _clean_env(tmp_path))
    assert result.returncode == 0, result.stderr


# --- real services (CI sets these variables, so they never skip there) -----------------

_SHELL = ["manage.py", "shell", "--no-imports", "-c"]


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES_URL)
def test_it_connects_to_postgresql_from_database_url(tmp_path):
    code = (
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    c.execute('SELECT 1')\n"
        "    print(connection.vendor, c.fetchone()[0])\n"
    )
    result = _run([*_SHELL, code], _clean_env(tmp_path, DATABASE_URL=POSTGRES_URL))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["postgresql", "1"]


# How many PostgreSQL backends served 20 database hops of a socket, one after another
# (channels' database_sync_to_async, as the live socket's handshake, snapshot, re-check).
_HOPS = """
import asyncio, time
from channels.db import database_sync_to_async
from django.db import connection
def backend():
    with connection.cursor() as c:
        c.execute("SELECT pg_backend_pid()")
        return c.fetchone()[0]
async def hops():
    return [await database_sync_to_async(backend)() for _ in range(20)]
started = time.perf_counter()
pids = asyncio.run(hops())
print(len(set(pids)), round((time.perf_counter() - started) / 20 * 1000, 2))
"""


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason=NO_POSTGRES_URL)
def test_it_keeps_the_web_process_on_a_few_pooled_postgresql_connections(tmp_path):
    pooled = _run(
        [*_SHELL, _HOPS], _clean_env(tmp_path, DATABASE_URL=POSTGRES_URL, DATABASE_POOL_SIZE="2")
    )
    assert pooled.returncode == 0, pooled.stderr
    backends, _ = pooled.stdout.split()
    assert 1 <= int(backends) <= 2
    # Without the pool each hop closed its connection and the next forked a new backend.
    unpooled = _run([*_SHELL, _HOPS], _clean_env(tmp_path, DATABASE_URL=POSTGRES_URL))
    assert unpooled.returncode == 0, unpooled.stderr
    assert int(unpooled.stdout.split()[0]) > 2


def test_it_sizes_the_postgresql_pool_from_the_environment_and_leaves_sqlite_alone(tmp_path):
    url = "postgres://clipwatch@db.invalid:5432/clipwatch"  # parsed, never connected to
    pool = _settings(tmp_path, DATABASE_URL=url, DATABASE_POOL_SIZE="3")["DB"]["OPTIONS"]["pool"]
    assert pool == {"min_size": 1, "max_size": 3, "timeout": 10}
    assert "pool" not in _settings(tmp_path, DATABASE_URL=url)["DB"]["OPTIONS"]
    assert "pool" not in _settings(tmp_path, DATABASE_POOL_SIZE="3")["DB"]["OPTIONS"]  # SQLite
    assert "DATABASE_POOL_SIZE" in _settings_error(tmp_path, DATABASE_POOL_SIZE="many")


def test_it_refuses_to_run_a_worker_on_the_web_process_s_pool(tmp_path):
    env = _clean_env(
        tmp_path,
        DATABASE_URL="postgres://clipwatch@db.invalid:5432/clipwatch",
        DATABASE_POOL_SIZE="4",
    )
    result = _run(["manage.py", "run_detector", "--once"], env)
    assert result.returncode == 2
    assert "DATABASE_POOL_SIZE is for the web process" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason=NO_REDIS_URL)
def test_it_round_trips_a_message_through_the_redis_channel_layer(tmp_path):
    code = (
        "import asyncio\n"
        "from channels.layers import get_channel_layer\n"
        "async def main():\n"
        "    layer = get_channel_layer()\n"
        "    name = await layer.new_channel()\n"
        "    await layer.send(name, {'type': 'ping', 'n': 42})\n"
        "    print(type(layer).__name__, (await layer.receive(name))['n'])\n"
        "asyncio.run(main())\n"
    )
    result = _run([*_SHELL, code], _clean_env(tmp_path, REDIS_URL=REDIS_URL))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["RedisChannelLayer", "42"]


@pytest.mark.parametrize("debug", ["true", "false"])
def test_it_opens_loopback_to_cameras_only_while_debugging_and_never_to_webhooks(tmp_path, debug):
    production = {"DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_ALLOWED_HOSTS": "x.org"}
    values = _settings(tmp_path, DJANGO_DEBUG=debug, **production)
    assert values["CAMERA_NETWORKS"] == (["127.0.0.0/8", "::1/128"] if debug == "true" else [])
    assert values["WEBHOOK_NETWORKS"] == []
