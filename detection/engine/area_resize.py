"""Fitting frames to the model's input on the model's device: INTER_AREA as matrix products.

On a GPU the CPU side (decode, resize) is the limit (docs/performance.md, "GPU"): fitting a
frame with OpenCV costs 1.4-1.9 ms of a core, the encoder ~0.1 ms of the GPU. INTER_AREA
is a separable box filter: output row o averages the input rows its span [o*s, (o+1)*s)
covers, each weighted by how much of it is covered. So a batch shrinks with two small
matrix products per channel, `Wy @ X @ Wx.T`, which a GPU does for thousands of frames at
once. The weights are OpenCV's (cv2.resize with INTER_AREA when shrinking); results agree
with it within one grey level (tests/engine/test_area_resize.py).

Only shrinking uses the box filter; enlarging falls back to bicubic interpolation like
`preprocess._resize` does.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .loader import PreprocessConfig


@lru_cache(maxsize=64)
def _area_weights_cpu(src: int, dst: int) -> torch.Tensor:
    """(dst, src) float64 weights; each row sums to 1."""
    if dst > src:
        raise ValueError("area weights only shrink: use bicubic to enlarge")
    scale = src / dst
    weights = torch.zeros(dst, src, dtype=torch.float64)
    for o in range(dst):
        start, end = o * scale, (o + 1) * scale
        first, last = int(start), min(src, int(-(-end // 1)))  # floor(start), ceil(end)
        for i in range(first, last):
            covered = min(end, i + 1) - max(start, i)
            if covered > 1e-9:
                weights[o, i] = covered / scale
    return weights


def area_weights(src: int, dst: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The (dst, src) float32 matrix that shrinks a length-`src` axis to `dst` by area."""
    return _area_weights_cpu(src, dst).to(device=device, dtype=torch.float32)


def resize_batch(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a (N, H, W, C) batch (uint8 or float, any device) to float (N, h, w, C), 0-255.

    Shrinking an axis uses OpenCV's INTER_AREA weights; an axis that grows uses bicubic.
    """
    _, h, w, _ = batch.shape
    x = batch.float()
    if height <= h and width <= w:
        wy = area_weights(h, height, x.device)  # (height, H)
        wx = area_weights(w, width, x.device)  # (width, W)
        # Columns first: (N, H, W, C) -> (N, H, width, C), then rows -> (N, height, width, C).
        x = torch.einsum("pw,nhwc->nhpc", wx, x)
        return torch.einsum("oh,nhpc->nopc", wy, x)
    # Growing (small frames): bicubic like preprocess._resize's INTER_CUBIC.
    x = x.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return x.clamp_(0, 255).permute(0, 2, 3, 1)


def crop_box(w: int, h: int, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """(left, top, crop_w, crop_h): the region `preprocess.fit_frame` keeps for "shortest"."""
    out_h, out_w = cfg.size
    scale = max(out_w / w, out_h / h)
    crop_w, crop_h = min(w, round(out_w / scale)), min(h, round(out_h / scale))
    return (w - crop_w) // 2, (h - crop_h) // 2, crop_w, crop_h


def fit_batch(batch_bgr: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """`preprocess.fit_frame` for a batch of same-sized frames on any device.

    (N, H, W, 3) uint8 BGR in, float (N, out_h, out_w, 3) BGR in 0-255 out, ready for
    `preprocess.normalize` (which accepts float). Modes: "shortest" (open_clip's default:
    centre crop then resize) and "squash"; "longest" (letterbox) is left to the CPU path.
    """
    out_h, out_w = cfg.size
    _, h, w, _ = batch_bgr.shape
    if cfg.resize_mode == "squash":
        return resize_batch(batch_bgr, out_h, out_w)
    if cfg.resize_mode != "shortest":
        raise ValueError(f"fit_batch does not do resize mode {cfg.resize_mode!r}")
    left, top, crop_w, crop_h = crop_box(w, h, cfg)
    return resize_batch(batch_bgr[:, top : top + crop_h, left : left + crop_w], out_h, out_w)
