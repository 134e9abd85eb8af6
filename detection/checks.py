"""System checks for the detection settings.

They run with every management command (`check`, `migrate`, `runserver`, the worker), so
a wrong model name, a missing checkpoint or an absent GPU is reported before the first
frame rather than as a traceback in the worker. open_clip and torch are imported inside
the functions that need them: both take seconds to import, and most settings never
need them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .engine import modelspec, weights
from .engine.modelspec import SpecError

TAG = "detection"

# What each kind of model-setting problem is reported as (ids kept from before the rule
# moved to detection.engine.modelspec, which the loader uses too).
SPEC_IDS: dict[str, str] = {
    "model": "detection.E001",
    "checkpoint": "detection.E002",
    "tag": "detection.E003",
}

Check = Callable[..., list[CheckMessage]]


def _spec_error(error: SpecError) -> Error:
    return Error(error.message, hint=error.hint, id=SPEC_IDS[error.problem])


def check_model(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    try:
        modelspec.resolve_model_name(settings.DETECTION_MODEL)
    except SpecError as error:
        return [_spec_error(error)]
    return []


def check_pretrained(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    pretrained: str = settings.DETECTION_PRETRAINED
    if modelspec.is_random_weights(pretrained):
        return [
            Warning(
                "DETECTION_PRETRAINED=none: the model has random weights, so every score "
                "is meaningless.",
                hint="Use this for tests and benchmarks only; set a pretrained tag or a "
                "checkpoint path for real monitoring.",
                id="detection.W001",
            )
        ]
    try:
        model_name = modelspec.resolve_model_name(settings.DETECTION_MODEL)
    except SpecError:
        model_name = None  # check_model reports it; one error per mistake is enough
    try:
        if model_name is not None:
            modelspec.resolve_pretrained(model_name, pretrained)
        elif modelspec.looks_like_path(pretrained):
            # A missing checkpoint is worth reporting whatever the model.
            modelspec.resolve_pretrained("", pretrained)
    except SpecError as error:
        return [_spec_error(error)]
    return []


def check_weights_available(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when the configured weights are neither cached nor downloadable right now.

    Without this, a first `make run` offline looked like a silent 'Running 0%' for ~48 s of
    hub retries before the analysis failed. The cache is looked up without the network; the
    host gets one connection attempt of at most weights.PROBE_TIMEOUT_S (1.5 s), DNS
    included, and none at all when the weights are cached or HF_HUB_OFFLINE is set.
    """
    pretrained: str = settings.DETECTION_PRETRAINED
    if modelspec.is_random_weights(pretrained) or modelspec.looks_like_path(pretrained):
        return []  # W001 and E002 speak for these; nothing is downloaded
    try:
        model_name = modelspec.resolve_model_name(settings.DETECTION_MODEL)
        if not modelspec.brings_own_weights(model_name):
            modelspec.resolve_pretrained(model_name, pretrained)
        source = weights.source_for(model_name, pretrained)
    except SpecError:
        return []  # E001/E003 report it: one message per mistake
    if source is None:
        return []
    cache_dir = getattr(settings, "DETECTION_CACHE_DIR", None)
    if weights.cached_path(source, str(cache_dir) if cache_dir else None):
        return []
    offline = weights.hub_offline() and source.repo is not None
    if not offline and weights.reachable(*source.host):
        return []  # not cached, but the first load can download them
    host, _port = source.host
    why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
    wait = "" if offline else " (after about 48 s of download retries)"
    return [
        Warning(
            f"The weights DETECTION_MODEL={settings.DETECTION_MODEL!r} "
            f"DETECTION_PRETRAINED={pretrained!r} are not cached on this machine and {why}: "
            f"every analysis would fail to load the model{wait}.",
            hint=_offline_hint(source),
            id="detection.W004",
        )
    ]


def _offline_hint(source: weights.WeightsSource) -> str:
    restart = (
        "then restart `make run` (or the worker) with the variable set; README, 'Running "
        "offline with a local checkpoint'."
    )
    if modelspec.brings_own_weights(settings.DETECTION_MODEL):
        return (
            f"On a machine with internet, download the files of {source.where} into a folder, "
            f"copy it here and set DETECTION_MODEL=local-dir:/path/to/folder; {restart}"
        )
    filename = source.needed[-1][-1] if source.needed else (source.url or "").rsplit("/", 1)[-1]
    return (
        f"On a machine with internet, download {filename} from {source.where}, copy it here "
        f"and set DETECTION_PRETRAINED=/path/to/{filename} (or DETECTION_PRETRAINED=none for "
        f"random weights, tests only); {restart}"
    )


def check_device(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    device: str = settings.DETECTION_DEVICE
    if not device.startswith("cuda"):
        return []  # "auto" falls back to the CPU by design; "cpu" always exists.

    import torch

    if not torch.cuda.is_available():
        return [
            Error(
                f"DETECTION_DEVICE={device!r} but CUDA is not available on this machine.",
                hint="Use DETECTION_DEVICE=auto or cpu, or install a CUDA build of torch.",
                id="detection.E004",
            )
        ]
    match = re.fullmatch(r"cuda:(\d+)", device)
    count = torch.cuda.device_count()
    if match and int(match.group(1)) >= count:
        return [
            Error(
                f"DETECTION_DEVICE={device!r} but this machine has {count} CUDA device(s).",
                hint=f"Use cuda:0 to cuda:{count - 1}.",
                id="detection.E005",
            )
        ]
    return []


def check_video_dirs(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    # MEDIA_ROOT is created on the first upload, so its absence on a fresh install is
    # normal and not worth a warning.
    media_root = Path(settings.MEDIA_ROOT).resolve()
    return [
        Warning(
            f"DETECTION_VIDEO_DIRS entry {directory} is not an existing directory.",
            hint="Create it or remove it from DETECTION_VIDEO_DIRS (colon-separated).",
            id="detection.W002",
        )
        for directory in map(Path, settings.DETECTION_VIDEO_DIRS)
        if directory.resolve() != media_root and not directory.is_dir()
    ]


def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if backend.endswith("InMemoryChannelLayer"):
        return [
            Warning(
                "The in-memory channel layer only reaches websockets in this process: live "
                "pages will not see scores from run_detector workers.",
                hint="It is for unit tests only. Unset CHANNELS_LAYER (embedded SQLite "
                "layer) or set REDIS_URL.",
                id="detection.W003",
            )
        ]
    return []


ALL_CHECKS: tuple[Check, ...] = (
    check_model,
    check_pretrained,
    check_weights_available,
    check_device,
    check_video_dirs,
    check_channel_layer,
)
