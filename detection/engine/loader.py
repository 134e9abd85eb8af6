"""Loading CLIP models through open_clip, once per process.

The model is built by open_clip's own `create_model_and_transforms`, so any open_clip
architecture, pretrained tag, local checkpoint file, `local-dir:`/`hf-hub:` model, or a
model config JSON file works. `none` builds random weights: same compute as trained ones,
meaningless scores, announced on every load.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cpu_kernels import pack_image_tower
from .device import (
    DTYPES,
    MEASURE,
    probe_cpu_precision,
    release_freed_memory,
    resolve_device,
    resolve_precision,
)
from .errors import ModelLoadError
from .modelspec import (
    checkpoint_preprocessing,
    is_random_weights,
    resolve_model_name,
    resolve_pretrained,
)
from .weights import route_hub_logs_through_root

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "laion2b_s34b_b88k"


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `device`/`precision` may be `auto`; they are resolved on load."""

    name: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None

    @property
    def random_weights(self) -> bool:
        return is_random_weights(self.pretrained)


@dataclass(frozen=True)
class PreprocessConfig:
    """The parts of open_clip's inference transform our numpy preprocessing reproduces."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str


@dataclass(eq=False)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    preprocess: PreprocessConfig
    reference_transform: Any  # open_clip's own torchvision transform (PIL in, tensor out)
    device: str
    precision: str
    dtype: torch.dtype
    spec: ModelSpec
    model_logit_scale: float
    context_length: int
    # Whether the image tower runs on oneDNN's packed kernels (CPU, bf16, ViT).
    packed_kernels: bool = False
    # Class embeddings per prompt tuple; they live and die with this model's weights.
    text_cache: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def random_weights(self) -> bool:
        return self.spec.random_weights

    def describe(self) -> dict[str, Any]:
        """Facts about the model for results and logs."""
        return {
            "model": self.spec.name,
            "pretrained": self.spec.pretrained,
            "random_weights": self.random_weights,
            "device": self.device,
            "precision": self.precision,
        }


_cache: dict[tuple[str, str, str, str, str | None], LoadedModel] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, str, str, str, str | None], threading.Lock] = {}


def load_model(spec: ModelSpec) -> LoadedModel:
    """Return the cached model for `spec`, loading it on first use (thread-safe).

    `auto` precision on a CPU with bf16 is settled by timing the model itself on its first
    load (device.probe_cpu_precision); the model is then cached under the precision chosen
    too, so a later `auto` (resolved from the probe's cached answer) finds it.
    """
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device, resolve_model_name(spec.name))
    key = (spec.name, spec.pretrained, device, precision, spec.cache_dir)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    # A per-key lock: two threads asking for the same model load it once, while a thread
    # asking for another model is not held up behind a multi-second load.
    with key_lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        loaded = _load(spec, device, precision)
        with _cache_lock:
            _cache[key] = loaded
            if loaded.precision != precision:
                _cache.setdefault((*key[:3], loaded.precision, *key[4:]), loaded)
        return loaded


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()


def _download_hint(model_name: str, tag: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    if cfg.get("hf_hub"):
        # open_clip writes 'org/repo/' (default file name) or 'org/repo/file.bin'.
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        where = f"{filename} from https://huggingface.co/{repo}"
    else:
        filename = os.path.basename(cfg.get("url", "")) or "the checkpoint"
        where = cfg.get("url", "the model's release page")
    return (
        f"could not download the {tag!r} weights of {model_name}. On a machine with internet, "
        f"download {where}, copy it here and set DETECTION_PRETRAINED=/path/to/{filename}; "
        f"or set DETECTION_PRETRAINED=none for random weights (tests only)"
    )


def _load(spec: ModelSpec, device: str, precision: str) -> LoadedModel:
    import open_clip

    # Imported with open_clip, the hub adds its own stderr handler: each retry warning of a
    # failing download would otherwise be printed twice (issue 14).
    route_hub_logs_through_root()
    model_name = resolve_model_name(spec.name)
    pretrained = resolve_pretrained(model_name, spec.pretrained)
    if spec.random_weights:
        log.warning(
            "DETECTION_PRETRAINED=none: %s has RANDOM weights; scores are meaningless "
            "(use this for tests and benchmarks only)",
            model_name,
        )
    # A checkpoint file: the preprocessing its model's weights were trained with, where
    # open_clip knows one for every tag of the model (MobileCLIP: mean 0, std 1, bilinear).
    from_file = pretrained is not None and Path(pretrained).is_file()
    preprocessing = checkpoint_preprocessing(model_name) if from_file else {}
    try:
        model, _, reference_transform = open_clip.create_model_and_transforms(
            model_name,
            pretrained=pretrained,
            load_weights=not spec.random_weights,
            device=device,
            cache_dir=spec.cache_dir,
            **preprocessing,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=spec.cache_dir)
    except ModelLoadError:
        raise
    except RuntimeError as exc:
        if "Failed to download" in str(exc) and pretrained is not None:
            raise ModelLoadError(_download_hint(model_name, pretrained)) from None
        raise ModelLoadError(f"could not load {model_name} ({spec.pretrained}): {exc}") from None
    except Exception as exc:  # noqa: BLE001
        # torch.load and state-dict loading raise many types for corrupt or foreign files.
        raise ModelLoadError(
            f"could not load {model_name} with DETECTION_PRETRAINED={spec.pretrained!r}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        ) from None

    model.eval()
    _reparameterize(model)
    pp = model.visual.preprocess_cfg
    size = pp["size"] if isinstance(pp["size"], (tuple, list)) else (pp["size"], pp["size"])
    if precision == MEASURE:
        # `auto` on a CPU with bf16: time this model's own image encoder (fp32 as loaded).
        probe = probe_cpu_precision(model_name, model.visual, _size(size))
        precision = probe.precision
    dtype = DTYPES[precision]
    if dtype != torch.float32:
        # Cast the whole model (not autocast): measured faster on CPU and the usual choice
        # for inference on GPU.
        model.to(dtype)
    model.requires_grad_(False)
    # A bf16 ViT tower on the CPU: packed oneDNN kernels (a no-op for anything else).
    packed = pack_image_tower(model.visual, _size(size))
    if device == "cpu":
        release_freed_memory()  # the fp32 weights a cast or the probe left behind

    context_length = getattr(tokenizer, "context_length", None) or getattr(
        model, "context_length", 77
    )
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        preprocess=PreprocessConfig(
            size=_size(size),
            mean=tuple(float(m) for m in pp["mean"]),
            std=tuple(float(s) for s in pp["std"]),
            interpolation=pp.get("interpolation", "bicubic"),
            resize_mode=pp.get("resize_mode", "shortest"),
        ),
        reference_transform=reference_transform,
        device=device,
        precision=precision,
        dtype=dtype,
        spec=spec,
        model_logit_scale=float(model.logit_scale.float().exp().item()),
        context_length=int(context_length),
        packed_kernels=packed,
    )
    log.info("loaded %s%s", loaded.describe(), " (packed CPU kernels)" if packed else "")
    return loaded


def _size(size: Any) -> tuple[int, int]:
    return int(size[0]), int(size[1])


def _reparameterize(model: torch.nn.Module) -> None:
    """Fold a timm image tower's training-time branches into single convolutions.

    MobileCLIP's FastViT trains with parallel (MobileOne-style) branches and batch norms;
    Apple's instructions reparameterize before inference, and open_clip leaves it to the
    caller. Same outputs (to float rounding), fewer and larger convolutions. ViT towers have
    nothing to fold and are left alone.
    """
    from open_clip.timm_model import TimmModel

    if isinstance(model.visual, TimmModel):
        from timm.utils import reparameterize_model

        reparameterize_model(model.visual, inplace=True)
