"""detection.W004: weights neither cached nor reachable, said at start-up within ~1.5 s.

The hub is a local socket (HF_ENDPOINT): listening (reachable), closed (refused), or with
its accept queue full (a connection that hangs, as a black-holed host does). The cache is
laid out as huggingface_hub lays it out (models--org--repo/refs/main and
snapshots/<commit>/<file>), in a folder named by HF_HUB_CACHE or DETECTION_CACHE_DIR.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import Warning
from django.test import override_settings

from detection import checks
from detection.engine import modelspec, weights
from tests.support.processes import SETTINGS_PREFIXES, manage

REPO = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
TAG = {"DETECTION_MODEL": "ViT-B-16", "DETECTION_PRETRAINED": "laion2b_s34b_b88k"}
# One attempt of at most 1.5 s; what is left over is the cost of the test machine.
BOUND_S = weights.PROBE_TIMEOUT_S + 1.0


class Hub:
    """A local stand-in for the hub's host: counts the connections it was offered."""

    def __init__(self, *, listening: bool = True, stuck: bool = False) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.fillers: list[socket.socket] = []
        if not listening:
            self.server.close()
            return
        self.server.listen(0)
        if stuck:
            # A full accept queue: Linux drops further SYNs, so a connect hangs.
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", self.port))
                self.fillers.append(filler)
            time.sleep(0.2)
        self.server.setblocking(False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, OSError):
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.server.close()


@pytest.fixture
def hub_env(monkeypatch, tmp_path: Path) -> Path:
    """An empty hub cache; no offline mode; returns the cache folder."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


@pytest.fixture
def hub(monkeypatch, hub_env) -> Iterator[Hub]:
    server = Hub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    yield server
    server.close()


def cache_file(cache: Path, repo: str, filename: str, commit: str = "0123abcd") -> Path:
    """A file in the hub cache, where hf_hub_download would have put it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


@pytest.fixture(scope="module", autouse=True)
def libraries_imported() -> None:
    """At start-up check_model imports open_clip (and so the hub) before this check runs:
    import them here too, so the times below are the check's own."""
    modelspec.resolve_model_name("ViT-B-16")
    weights.hub_cache_dir()


def timed_check() -> tuple[list, float]:
    started = time.perf_counter()
    messages = checks.check_weights_available()
    return messages, time.perf_counter() - started


def test_it_is_registered_with_the_other_detection_checks():
    assert checks.check_weights_available in checks.ALL_CHECKS


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_is_quiet_when_the_weights_are_in_the_hub_cache_and_asks_no_host(hub, hub_env):
    cache_file(hub_env, REPO, "open_clip_pytorch_model.bin")

    messages, seconds = timed_check()

    assert messages == []
    assert hub.connections() == 0  # cached: no probe at all
    assert seconds < BOUND_S


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_accepts_the_safetensors_twin_open_clip_prefers(hub, hub_env):
    cache_file(hub_env, REPO, "open_clip_model.safetensors")

    assert checks.check_weights_available() == []
    assert hub.connections() == 0


def test_it_looks_in_detection_cache_dir_when_it_is_set(hub, tmp_path):
    own = tmp_path / "models"
    cache_file(own, REPO, "open_clip_pytorch_model.bin")

    with override_settings(**TAG, DETECTION_CACHE_DIR=str(own)):
        assert checks.check_weights_available() == []
    assert hub.connections() == 0


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_is_quiet_when_not_cached_but_the_hub_answers(hub):
    assert checks.check_weights_available() == []
    assert hub.connections() == 1  # one attempt, no retries


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_warns_when_not_cached_and_the_hub_refuses(monkeypatch, hub_env):
    closed = Hub(listening=False)
    monkeypatch.setenv("HF_ENDPOINT", closed.endpoint)

    [message], seconds = timed_check()

    assert isinstance(message, Warning) and message.id == "detection.W004"
    assert "DETECTION_PRETRAINED='laion2b_s34b_b88k'" in message.msg
    assert "not cached on this machine and 127.0.0.1 cannot be reached" in message.msg
    assert f"{closed.endpoint}/{REPO}" in message.hint
    assert "DETECTION_PRETRAINED=/path/to/open_clip_pytorch_model.bin" in message.hint
    assert "DETECTION_PRETRAINED=none" in message.hint
    assert "restart `make run`" in message.hint
    assert seconds < BOUND_S


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_gives_up_on_a_hanging_connection_after_one_and_a_half_seconds(monkeypatch, hub_env):
    stuck = Hub(stuck=True)
    monkeypatch.setenv("HF_ENDPOINT", stuck.endpoint)
    try:
        [message], seconds = timed_check()
    finally:
        stuck.close()

    assert message.id == "detection.W004"
    assert weights.PROBE_TIMEOUT_S - 0.1 <= seconds < BOUND_S


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_counts_hf_hub_offline_as_unreachable_without_trying(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    [message] = checks.check_weights_available()

    assert message.id == "detection.W004"
    assert "HF_HUB_OFFLINE is set" in message.msg
    assert "48 s" not in message.msg  # offline, the hub fails at once
    assert hub.connections() == 0


@override_settings(**TAG, DETECTION_CACHE_DIR=None)
def test_it_accepts_cached_weights_offline(hub, hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_file(hub_env, REPO, "open_clip_pytorch_model.bin")

    assert checks.check_weights_available() == []


@pytest.mark.parametrize("pretrained", ["none", "/nowhere/model.bin", "weights.safetensors"])
def test_it_leaves_random_weights_and_checkpoint_paths_alone(hub, pretrained):
    with override_settings(DETECTION_MODEL="ViT-B-16", DETECTION_PRETRAINED=pretrained):
        assert checks.check_weights_available() == []
    assert hub.connections() == 0


def test_it_leaves_wrong_names_to_the_name_checks(hub):
    with override_settings(DETECTION_MODEL="ViT-B-61", DETECTION_PRETRAINED="laion2b_s34b_b88k"):
        assert checks.check_weights_available() == []
    with override_settings(DETECTION_MODEL="ViT-B-16", DETECTION_PRETRAINED="no_such_tag"):
        assert checks.check_weights_available() == []
    assert hub.connections() == 0


@override_settings(
    DETECTION_MODEL=f"hf-hub:{REPO}", DETECTION_PRETRAINED="any", DETECTION_CACHE_DIR=None
)
def test_it_needs_the_config_and_the_weights_of_an_hf_hub_model_cached(monkeypatch, hub_env):
    closed = Hub(listening=False)
    monkeypatch.setenv("HF_ENDPOINT", closed.endpoint)
    cache_file(hub_env, REPO, "open_clip_config.json")
    [message] = checks.check_weights_available()
    assert "DETECTION_MODEL=local-dir:" in message.hint

    cache_file(hub_env, REPO, "open_clip_model.safetensors")
    assert checks.check_weights_available() == []


@pytest.mark.slow
def test_it_says_the_warning_once_with_the_way_out_in_manage_check(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        MEDIA_ROOT=str(tmp_path / "media"),
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_OFFLINE="1",
        **TAG,
    )
    done = manage("check", env=env)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("detection.W004") == 1
    assert "HF_HUB_OFFLINE is set" in output and "restart `make run`" in output
