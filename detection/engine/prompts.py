"""Prompt ensembles: several prompts per class, embedded once and cached.

Each class (normal, anomaly) is described by one or more prompts. As in CLIP's prompt
ensembling (open_clip's `build_zero_shot_classifier`), each prompt is embedded and
L2-normalised, the class embedding is their mean, normalised again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from .errors import PromptError
from .limits import prompt_problem, split_prompts
from .loader import LoadedModel

log = logging.getLogger(__name__)


Prompts = str | Iterable[str]


def normalize_prompts(prompts: Prompts | None, label: str) -> tuple[str, ...]:
    """Turn a string (one prompt per line) or a list into a tuple of stripped prompts."""
    if prompts is None:
        raise PromptError(f"{label} prompt is missing")
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not all(isinstance(p, str) for p in items):
        raise PromptError(f"{label} prompts must be text")
    cleaned = tuple(p for item in items for p in split_prompts(item))
    problem = prompt_problem(cleaned)
    if problem is None:
        return cleaned
    if problem.code == "blank":
        raise PromptError(f"{label} prompt is empty: describe what a {label} frame shows")
    if problem.code == "too_many":
        raise PromptError(f"too many {label} prompts ({problem.found}; at most {problem.limit})")
    raise PromptError(
        f"a {label} prompt is {problem.found} characters long; keep each under {problem.limit}"
    )


def class_embedding(loaded: LoadedModel, prompts: tuple[str, ...]) -> torch.Tensor:
    """The normalised ensemble embedding (fp32, on the model's device) of one class."""
    with loaded.lock:
        cached = loaded.text_cache.get(prompts)
    if cached is not None:
        return cached
    _warn_if_truncated(loaded, prompts)
    tokens = loaded.tokenizer(list(prompts)).to(loaded.device)
    with torch.inference_mode():
        emb = loaded.model.encode_text(tokens, normalize=True).float()
    emb = emb.mean(dim=0)
    emb = emb / emb.norm()
    with loaded.lock:
        loaded.text_cache[prompts] = emb
    return emb


def _warn_if_truncated(loaded: LoadedModel, prompts: tuple[str, ...]) -> None:
    encode = getattr(loaded.tokenizer, "encode", None)
    if encode is None:  # HF tokenizers: they truncate too, but do not expose a cheap count
        return
    limit = loaded.context_length - 2  # start and end tokens
    for prompt in prompts:
        n = len(encode(prompt))
        if n > limit:
            log.warning(
                "prompt truncated to the model's %d-token context (%d tokens): %r",
                loaded.context_length,
                n + 2,
                prompt[:80],
            )
