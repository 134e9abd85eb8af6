"""What DETECTION_MODEL and DETECTION_PRETRAINED may say: one rule for the check and the loader.

`manage.py check` and the loader used to validate these settings each in their own way, and
they disagreed (the check accepted `LAION2B-S34B-B88K`, which open_clip itself accepts, and the
loader then failed every analysis with it). Both now call the two functions below; the check
turns a `SpecError` into a system-check message, the loader raises it as it is.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal

from .errors import ModelLoadError

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_WEIGHTS = "none"
# Files open_clip's load_checkpoint reads (.npz: big_vision weights).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")

Problem = Literal["model", "checkpoint", "tag"]


class SpecError(ModelLoadError):
    """A model setting that cannot work; `problem` says which kind, `hint` what would."""

    def __init__(self, problem: Problem, message: str, hint: str) -> None:
        super().__init__(f"{message} {hint}")
        self.problem = problem
        self.message = message
        self.hint = hint


def is_random_weights(pretrained: str) -> bool:
    return pretrained.strip().lower() in (RANDOM_WEIGHTS, "")


def brings_own_weights(name: str) -> bool:
    """hf-hub: and local-dir: models load their weights with the model; the tag is ignored."""
    return name.strip().startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))


def looks_like_path(value: str) -> bool:
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return any(sep in value for sep in separators) or value.lower().endswith(CHECKPOINT_SUFFIXES)


def clean_tag(tag: str) -> str:
    # open_clip looks tags up this way (open_clip.pretrained._clean_tag): accept what it does.
    return tag.strip().lower().replace("-", "_")


def resolve_model_name(name: str) -> str:
    """The open_clip model name for DETECTION_MODEL; a JSON config file is registered."""
    name = name.strip()
    if name.startswith(HF_HUB_PREFIX):
        if not name.removeprefix(HF_HUB_PREFIX).strip():
            raise _bad_model(name, "hf-hub: needs a repository, e.g. hf-hub:org/repo.")
        return name
    if name.startswith(LOCAL_DIR_PREFIX):
        directory = Path(name.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
        if not directory.is_dir():
            raise _bad_model(name, f"The directory {directory} does not exist.")
        return name

    import open_clip

    if name.lower().endswith(".json"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise _bad_model(name, f"The model config file {path} does not exist.")
        # open_clip keys its registry by file stem; registering twice is harmless.
        open_clip.add_model_config(path)
        return path.stem
    known = open_clip.list_models()
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=5)
    raise _bad_model(
        name,
        f"Did you mean: {', '.join(close)}?"
        if close
        else "Use a name from open_clip.list_models(), hf-hub:org/repo, local-dir:/path "
        "or a path to a model config .json.",
    )


def _bad_model(name: str, hint: str) -> SpecError:
    return SpecError("model", f"DETECTION_MODEL={name!r} is not a model open_clip can build.", hint)


def resolve_pretrained(model_name: str, pretrained: str) -> str | None:
    """What to pass open_clip as `pretrained` for a resolved model name; None: no weights file.

    None for random weights and for models that bring their own weights; a checkpoint path
    as given; a tag in open_clip's own spelling (so `LAION2B-S34B-B88K` works everywhere).
    """
    value = pretrained.strip()
    if is_random_weights(value) or brings_own_weights(model_name):
        return None
    if looks_like_path(value) or Path(value).expanduser().is_file():
        path = Path(value).expanduser()
        if not path.is_file():
            raise SpecError(
                "checkpoint",
                f"DETECTION_PRETRAINED={value!r}: checkpoint file not found.",
                "Point it at an existing open_clip checkpoint (e.g. open_clip_pytorch_model.bin), "
                "use a pretrained tag, or 'none' for random weights (tests only).",
            )
        return str(path)

    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    tag = clean_tag(value)
    if tag in tags:
        return tag
    raise SpecError(
        "tag",
        f"DETECTION_PRETRAINED={value!r} is not a pretrained tag for {model_name}.",
        f"Valid tags for {model_name}: {', '.join(tags)}; or give a path to a local checkpoint "
        "file, or 'none' for random weights (tests only)."
        if tags
        else f"open_clip knows no pretrained weights for {model_name}: give a path to a local "
        "checkpoint file, or 'none' for random weights (tests only).",
    )
