"""What DETECTION_MODEL and DETECTION_PRETRAINED may say: one rule for the check and the loader.

`manage.py check` and the loader used to validate these settings each in their own way, and
they disagreed (the check accepted `LAION2B-S34B-B88K`, which open_clip itself accepts, and the
loader then failed every analysis with it). Both now call the two functions below; the check
turns a `SpecError` into a system-check message, the loader raises it as it is.

DETECTION_MODEL may also name a preset (`PRESETS`: `vit-b-16`, `vit-b-32`, `vit-l-14`,
`mobileclip2-s0`, `mobileclip2-s2`): an open_clip model with the weights we recommend for
it, and the published accuracy behind the choice (docs/models.md compares them). A preset's
key is its open_clip name in lower case, so `ViT-B-32` and `vit-b-32` are the same preset,
and an unset DETECTION_PRETRAINED follows the model (`default_pretrained`).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ModelLoadError

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_WEIGHTS = "none"
# Files open_clip's load_checkpoint reads (.npz: big_vision weights).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")

Problem = Literal["model", "checkpoint", "tag"]

# The weights DETECTION_PRETRAINED names when it is unset and the model is no preset (the
# project's default from the start: ViT-B-16's).
DEFAULT_PRETRAINED = "laion2b_s34b_b88k"

OPEN_CLIP_RESULTS = "mlfoundations/open_clip docs/openclip_results.csv"
MOBILECLIP_README = "apple/ml-mobileclip README.md"


@dataclass(frozen=True)
class Preset:
    """An open_clip model and pretrained tag we recommend, with the published ImageNet-1k
    zero-shot top-1 accuracy (%) of exactly those weights and where it is published."""

    key: str
    model: str
    pretrained: str
    imagenet_top1: float
    source: str
    note: str = ""


def _presets(*presets: Preset) -> dict[str, Preset]:
    return {p.key: p for p in presets}


PRESETS: dict[str, Preset] = _presets(
    Preset(
        key="vit-b-16",
        model="ViT-B-16",
        pretrained="laion2b_s34b_b88k",
        imagenet_top1=70.23,
        source=f"{OPEN_CLIP_RESULTS}, row ViT-B-16,laion2b_s34b_b88k",
        note="the default, the prototype's model",
    ),
    Preset(
        key="vit-b-32",
        model="ViT-B-32",
        pretrained="laion2b_s34b_b79k",
        imagenet_top1=66.56,
        source=f"{OPEN_CLIP_RESULTS}, row ViT-B-32,laion2b_s34b_b79k",
        note="about 1/4 of ViT-B-16's compute (49 patches instead of 196)",
    ),
    Preset(
        key="vit-l-14",
        model="ViT-L-14",
        pretrained="datacomp_xl_s13b_b90k",
        imagenet_top1=79.21,
        source=f"{OPEN_CLIP_RESULTS}, row ViT-L-14,datacomp_xl_s13b_b90k",
        note="for GPUs: about 4.6x ViT-B-16's compute",
    ),
    Preset(
        key="mobileclip2-s0",
        model="MobileCLIP2-S0",
        pretrained="dfndr2b",
        imagenet_top1=71.5,
        source=f"{MOBILECLIP_README}, table row MobileCLIP2-S0",
        note="convolutional (timm FastViT); Apple's weights licence: research use only",
    ),
    Preset(
        key="mobileclip2-s2",
        model="MobileCLIP2-S2",
        pretrained="dfndr2b",
        imagenet_top1=77.2,
        source=f"{MOBILECLIP_README}, table row MobileCLIP2-S2",
        note="convolutional (timm FastViT); Apple's weights licence: research use only",
    ),
)


def preset_for(name: str) -> Preset | None:
    """The preset DETECTION_MODEL names (its key or its open_clip name, in any case)."""
    return PRESETS.get(name.strip().lower().replace("_", "-"))


def default_pretrained(model: str) -> str:
    """What an unset DETECTION_PRETRAINED means for DETECTION_MODEL=`model`: a preset's own
    weights, else the project's default tag (as before presets existed)."""
    preset = preset_for(model)
    return preset.pretrained if preset else DEFAULT_PRETRAINED


def checkpoint_preprocessing(model_name: str) -> dict[str, Any]:
    """open_clip arguments for the preprocessing a checkpoint *file* of `model_name` needs.

    open_clip applies a pretrained tag's preprocessing (mean, std, interpolation, resize
    mode) only when it is given the tag; a file gets its defaults (OpenAI's mean and std,
    bicubic), which is wrong for MobileCLIP (mean 0, std 1, bilinear) and silently skews
    every embedding. Where every tag open_clip knows for the model agrees on one
    preprocessing, it belongs to the model and is returned here; where the tags disagree
    (ViT-L-14: its laion2b weights want mean 0.5, its others OpenAI's), the weights decide,
    and a file alone does not say which: {} (open_clip's defaults, as before). A whole
    hub folder (`local-dir:`) brings its own open_clip_config.json instead.
    """
    import open_clip

    found = {
        tuple(cfg.get(key) for key, _ in _PREPROCESS_ARGS)
        for tag in open_clip.list_pretrained_tags_by_model(model_name)
        if (cfg := open_clip.get_pretrained_cfg(model_name, tag))
    }
    if len(found) != 1:
        return {}
    values = found.pop()
    pairs = zip(_PREPROCESS_ARGS, values, strict=True)
    return {arg: value for (_, arg), value in pairs if value is not None}


# Pretrained-config keys and the create_model_and_transforms arguments that set them.
_PREPROCESS_ARGS = (
    ("mean", "image_mean"),
    ("std", "image_std"),
    ("interpolation", "image_interpolation"),
    ("resize_mode", "image_resize_mode"),
)


def presets_hint() -> str:
    return "Presets: " + ", ".join(PRESETS) + " (docs/models.md)."


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
    preset = preset_for(name)
    if preset is not None:
        return preset.model
    close = difflib.get_close_matches(name, [*PRESETS, *known], n=5)
    raise _bad_model(
        name,
        (f"Did you mean: {', '.join(close)}? " if close else "")
        + f"{presets_hint()} Or a name from open_clip.list_models(), hf-hub:org/repo, "
        "local-dir:/path or a path to a model config .json.",
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
    preset = preset_for(model_name)
    raise SpecError(
        "tag",
        f"DETECTION_PRETRAINED={value!r} is not a pretrained tag for {model_name}.",
        (
            f"Unset it for the preset's own weights ({preset.pretrained}). "
            if preset and preset.model == model_name
            else ""
        )
        + (
            f"Valid tags for {model_name}: {', '.join(tags)}; or give a path to a local "
            "checkpoint file, or 'none' for random weights (tests only)."
            if tags
            else f"open_clip knows no pretrained weights for {model_name}: give a path to a "
            "local checkpoint file, or 'none' for random weights (tests only)."
        ),
    )
