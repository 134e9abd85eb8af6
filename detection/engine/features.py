"""Image features for the normality memory: the whole frame and its 2x2 regions, one pass.

The prompt score reads the model's pooled embedding of the centre-cropped frame; the
normality memory needs more: the whole frame (a new object by the border must not be cropped
away), photometrically normalised (dusk is not an anomaly), and each quadrant on its own (a
small change in a corner barely moves a whole-frame embedding). Embedding five crops would
cost five encoder passes per frame. A ViT already computes one token per patch: the mean of
a quadrant's patch tokens, through the same final projection as the pooled token (as
MaskCLIP reads dense CLIP features), describes that quadrant for the price of one pass.

The price: a quadrant's tokens have attended to the whole frame, so a small change in one
corner moves its region feature less than it moves an embedding of the corner alone.
`DETECTION_NORMALITY_VIEWS=crops` embeds the five views separately instead (five passes
per frame, more sensitive to small local changes); docs/architecture.md has the numbers.

Models without patch tokens (ResNet towers, attentional pooling) fall back to embedding the
crops (`views`), five passes per frame (the detector's `describe()` says which).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .loader import LoadedModel, PreprocessConfig
from .normality import GRID, photometric_normalize, views
from .preprocess import _resize, to_tensor

N_VIEWS = 1 + GRID * GRID


def fit_normality(frame_bgr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The frame squashed to the model's input (nothing cropped), photometrically normalised.

    Normalising after the resize costs a 224 x 224 image's arithmetic, not a full frame's.
    """
    out_h, out_w = cfg.size
    return photometric_normalize(_resize(frame_bgr, out_w, out_h))


def _token_regions(visual: torch.nn.Module) -> bool:
    """Whether `visual` is open_clip's ViT with patch tokens we can pool by region."""
    from open_clip.transformer import VisionTransformer

    return (
        isinstance(visual, VisionTransformer)
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "proj", None) is not None
        and getattr(visual, "pool_type", "") in ("tok", "avg")
        and not getattr(visual, "final_ln_after_pool", False)
    )


def uses_tokens(loaded: LoadedModel) -> bool:
    return _token_regions(loaded.model.visual)


def _region_slices(side: int, grid: int = GRID) -> list[slice]:
    """Rows (or columns) of a side x side token grid per region; an odd side shares its
    middle row between neighbours rather than dropping it."""
    out = []
    for part in range(grid):
        start = (part * side) // grid
        end = -(-((part + 1) * side) // grid)  # ceil
        out.append(slice(start, end))
    return out


def encode_views(loaded: LoadedModel, pixels: torch.Tensor) -> np.ndarray:
    """(N, 1 + GRID*GRID, D) unit vectors: the pooled embedding, then each region's.

    `pixels` is a normalised batch of frames prepared by `fit_normality`.
    """
    visual = loaded.model.visual
    with torch.inference_mode():
        # open_clip's VisionTransformer.forward, step by step, keeping the patch tokens.
        x = visual._embeds(pixels)
        x = visual.transformer(x)
        pooled, tokens = visual._pool(x)
        pooled = pooled @ visual.proj
        n, count, width = tokens.shape
        side = math.isqrt(count)
        grid = tokens.reshape(n, side, side, width)
        rows = _region_slices(side)
        # The mean over a region's patches (max-pooling was tried: no better on average
        # over random initialisations, and noisier; see docs/architecture.md).
        regions = [grid[:, r, c].mean(dim=(1, 2)) for r in rows for c in rows]
        regional = torch.stack(regions, dim=1) @ visual.proj
        features = torch.cat([pooled[:, None], regional], dim=1).float()
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return features.cpu().numpy()


def prepare(loaded: LoadedModel, frame_bgr: np.ndarray, crops: bool | None = None) -> np.ndarray:
    """A frame made ready for `encode_fitted` (cheap, for the decoder thread): the fitted
    frame (H, W, 3), or, for models without patch tokens (or `crops`), its views cropped and
    fitted one by one (N_VIEWS, H, W, 3)."""
    if crops is None:
        crops = not uses_tokens(loaded)
    if not crops:
        return fit_normality(frame_bgr, loaded.preprocess)
    return np.stack(views(frame_bgr, loaded.preprocess.size[0]))


def encode_fitted(loaded: LoadedModel, prepared: Sequence[np.ndarray]) -> np.ndarray:
    """Normality features (N, N_VIEWS, D) of frames from `prepare`: one pass per frame with
    patch tokens, N_VIEWS passes with cropped views."""
    if prepared[0].ndim == 3:
        return encode_views(loaded, to_tensor(list(prepared), loaded))
    from .scoring import encode_images

    flat = encode_images(loaded, to_tensor(np.concatenate(list(prepared)), loaded))
    return flat.cpu().numpy().reshape(len(prepared), N_VIEWS, -1)


def embed_frames(
    loaded: LoadedModel,
    frames_bgr: Sequence[np.ndarray],
    batch_size: int = 16,
    crops: bool | None = None,
) -> np.ndarray:
    """Normality features of BGR frames of any size: (N, N_VIEWS, D)."""
    prepared = [prepare(loaded, f, crops) for f in frames_bgr]
    if not prepared:
        return np.zeros((0, N_VIEWS, 0), np.float32)
    parts = [
        encode_fitted(loaded, prepared[i : i + batch_size])
        for i in range(0, len(prepared), batch_size)
    ]
    return np.concatenate(parts)
