"""Where a model's weights would come from, whether they are cached, and whether the host
that serves them answers: what the start-up check needs to warn, within about a second and
a half, about weights a worker would otherwise spend ~48 s of hub retries failing to get.

Nothing here downloads. The cache is looked up the way open_clip and huggingface_hub read
it (the hub's `models--org--repo/snapshots/<rev>/<file>` layout, or open_clip's
`~/.cache/clip/<file>` for URL weights); the host gets ONE connection attempt, DNS included,
in a daemon thread that is abandoned after the timeout (a stuck resolver cannot hold up
start-up).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .modelspec import (
    HF_HUB_PREFIX,
    brings_own_weights,
    clean_tag,
    is_random_weights,
    looks_like_path,
)

PROBE_TIMEOUT_S = 1.5
DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VALUES = {"1", "on", "yes", "true"}
# open_clip's names for hub weights (open_clip.constants), and what it looks for first.
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
HF_CONFIG_NAME = "open_clip_config.json"


@dataclass(frozen=True)
class WeightsSource:
    """Where open_clip would fetch the weights of a (model, tag) from.

    Hub weights: `repo` and, for each file needed, the names any of which will do (open_clip
    takes a .safetensors twin first when there is one). URL weights: `url`.
    """

    repo: str | None = None
    needed: tuple[tuple[str, ...], ...] = ()
    url: str | None = None

    @property
    def where(self) -> str:
        if self.repo:
            return f"{hub_endpoint()}/{self.repo}"
        return self.url or ""

    @property
    def host(self) -> tuple[str, int]:
        parts = urlsplit(self.url if self.url else hub_endpoint())
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname or "", parts.port or default


def source_for(model_name: str, pretrained: str) -> WeightsSource | None:
    """Where the weights come from; None when nothing is downloaded (random weights, a
    local checkpoint file, `local-dir:` models) or open_clip knows no weights for the tag
    (the tag check reports that)."""
    name = model_name.strip()
    if name.startswith(HF_HUB_PREFIX):
        repo = name.removeprefix(HF_HUB_PREFIX).strip()
        return WeightsSource(
            repo=repo, needed=((HF_CONFIG_NAME,), (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME))
        )
    if brings_own_weights(name) or is_random_weights(pretrained) or looks_like_path(pretrained):
        return None

    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, clean_tag(pretrained)) or {}
    if cfg.get("file"):
        return None
    if cfg.get("hf_hub"):
        # 'org/repo/' (the default file name) or 'org/repo/file.bin', as open_clip writes it.
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        return WeightsSource(repo=repo, needed=(_with_safe_twin(filename),))
    if cfg.get("url"):
        return WeightsSource(url=cfg["url"])
    return None


def _with_safe_twin(filename: str) -> tuple[str, ...]:
    # open_clip.pretrained._get_safe_alternatives: the .safetensors twin is tried first.
    if filename == HF_WEIGHTS_NAME:
        return (HF_SAFE_WEIGHTS_NAME, filename)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def cached_path(source: WeightsSource, cache_dir: str | None = None) -> str | None:
    """The local file the weights would load from without the network, or None.

    `cache_dir` is DETECTION_CACHE_DIR (open_clip passes it to the hub as its cache);
    unset, the hub's own cache (HF_HUB_CACHE, HF_HOME/hub) or `~/.cache/clip` for URLs.
    """
    if source.url:
        folder = Path(cache_dir or "~/.cache/clip").expanduser()
        path = folder / os.path.basename(urlsplit(source.url).path)
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    hub_cache = cache_dir or hub_cache_dir()
    found: str | None = None
    for names in source.needed:
        for filename in names:
            hit = try_to_load_from_cache(source.repo or "", filename, cache_dir=hub_cache)
            if isinstance(hit, str) and os.path.isfile(hit):
                found = hit
                break
        else:
            return None
    return found


def hub_cache_dir() -> str:
    """The hub cache as huggingface_hub resolves it, read now (tests change the env)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set: the hub will not even try."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in OFFLINE_VALUES


def reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether one TCP connection to host:port opens within `timeout` s, DNS included.

    One attempt, no retries. `socket.create_connection`'s timeout does not cover name
    resolution, so the attempt runs in a daemon thread and is given up on (left to finish
    on its own) when the time is over.
    """
    if not host:
        return False
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="weights-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def route_hub_logs_through_root() -> None:
    """Let huggingface_hub's warnings reach the log once, through the application's handlers.

    huggingface_hub adds its own stderr StreamHandler to its `huggingface_hub` logger on
    import, and that logger also propagates to the root, so with a configured root logger
    (Django's LOGGING) every retry warning was printed twice: raw on stderr and formatted on
    stdout. Its handler goes when the root logger has handlers of its own; without them (the
    API used in a bare script) the library keeps its own, so its warnings still show.
    """
    if not logging.getLogger().handlers:
        return
    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        # Exactly the library's default: a plain StreamHandler with no formatter (one that
        # LOGGING configured would have its formatter).
        if type(handler) is logging.StreamHandler and handler.formatter is None:
            hub.removeHandler(handler)
