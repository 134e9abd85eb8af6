"""System checks for the detection settings.

They run with every management command (`check`, `migrate`, `runserver`, the worker), so
a wrong model name, a missing checkpoint or an absent GPU is reported before the first
frame rather than as a traceback in the worker. open_clip and torch are imported inside
the functions that need them: both take seconds to import, and most settings never
need them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

TAG = "detection"

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

Check = Callable[..., list[CheckMessage]]


def _is_builtin_model(name: str) -> bool:
    """True when the name is an open_clip config name rather than a schema or a path."""
    return not (
        name.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)) or name.lower().endswith(".json")
    )


def _looks_like_path(value: str) -> bool:
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return any(sep in value for sep in separators) or value.lower().endswith(CHECKPOINT_SUFFIXES)


def _clean_tag(tag: str) -> str:
    # open_clip normalises tags this way before looking them up (pretrained._clean_tag).
    return tag.lower().replace("-", "_")


def check_model(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    name: str = settings.DETECTION_MODEL
    if name.startswith(HF_HUB_PREFIX):
        if not name.removeprefix(HF_HUB_PREFIX).strip():
            return [_unknown_model(name, "hf-hub: needs a repository, e.g. hf-hub:org/repo")]
        return []
    if name.startswith(LOCAL_DIR_PREFIX):
        directory = Path(name.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
        if not directory.is_dir():
            return [_unknown_model(name, f"the directory {directory} does not exist")]
        return []
    if name.lower().endswith(".json"):
        if not Path(name).expanduser().is_file():
            return [_unknown_model(name, f"the model config file {name} does not exist")]
        return []

    import open_clip

    known = open_clip.list_models()
    if name in known:
        return []
    close = difflib.get_close_matches(name, known, n=5)
    hint = (
        f"Did you mean: {', '.join(close)}?"
        if close
        else "Use a name from open_clip.list_models(), hf-hub:org/repo, local-dir:/path "
        "or a path to a model config .json."
    )
    return [_unknown_model(name, hint)]


def _unknown_model(name: str, hint: str) -> Error:
    return Error(
        f"DETECTION_MODEL={name!r} is not a model open_clip can build.",
        hint=hint,
        id="detection.E001",
    )


def check_pretrained(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    pretrained: str = settings.DETECTION_PRETRAINED
    model: str = settings.DETECTION_MODEL

    if pretrained.lower() == "none":
        return [
            Warning(
                "DETECTION_PRETRAINED=none: the model has random weights, so every score "
                "is meaningless.",
                hint="Use this for tests and benchmarks only; set a pretrained tag or a "
                "checkpoint path for real monitoring.",
                id="detection.W001",
            )
        ]

    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            return [
                Error(
                    f"DETECTION_PRETRAINED={pretrained!r} looks like a checkpoint path, but "
                    "no such file exists.",
                    hint="Point it at an existing open_clip checkpoint (e.g. "
                    "open_clip_pytorch_model.bin), or use a pretrained tag.",
                    id="detection.E002",
                )
            ]
        return []

    # hf-hub:/local-dir:/json models carry their own weights; open_clip ignores the tag.
    if not _is_builtin_model(model):
        return []

    import open_clip

    if model not in open_clip.list_models():
        return []  # check_model already reports it; one error per mistake is enough.
    tags = open_clip.list_pretrained_tags_by_model(model)
    if _clean_tag(pretrained) in tags:
        return []
    hint = (
        f"Valid tags for {model}: {', '.join(tags)}."
        if tags
        else f"open_clip knows no pretrained weights for {model}; use a checkpoint path."
    )
    return [
        Error(
            f"DETECTION_PRETRAINED={pretrained!r} is not a pretrained tag for {model}.",
            hint=hint,
            id="detection.E003",
        )
    ]


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
    check_device,
    check_video_dirs,
    check_channel_layer,
)
