"""Fitting frames on the model's device (detection/engine/area_resize.py) against OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detection.engine.area_resize import area_weights, fit_batch, resize_batch
from detection.engine.loader import PreprocessConfig
from detection.engine.preprocess import fit_frame


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: both the averaging and the edges of each cell matter.
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx * 255 / w + yy * 128 / h) % 256)[None, :, :, None]
    noise = rng.integers(0, 60, size=(n, h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((480, 640), (224, 224)),
        ((448, 448), (224, 224)),
        ((720, 1280), (180, 320)),
        ((1080, 1080), (224, 224)),
        ((301, 517), (97, 211)),
    ],
)
def test_it_shrinks_like_opencv_inter_area(src, dst):
    frames = _frames(3, *src)
    ours = resize_batch(torch.from_numpy(frames), *dst).round().clamp(0, 255).to(torch.uint8)
    for frame, mine in zip(frames, ours.numpy(), strict=True):
        theirs = cv2.resize(frame, (dst[1], dst[0]), interpolation=cv2.INTER_AREA)
        diff = np.abs(mine.astype(int) - theirs.astype(int))
        assert diff.max() <= 1, (src, dst, diff.max())


def test_it_makes_weights_that_keep_the_brightness():
    weights = area_weights(517, 211)
    assert weights.shape == (211, 517)
    assert torch.allclose(weights.sum(dim=1), torch.ones(211), atol=1e-6)
    with pytest.raises(ValueError, match="only shrink"):
        area_weights(100, 200)


def test_it_fits_a_batch_as_the_cpu_path_fits_each_frame():
    cfg = PreprocessConfig(
        size=(224, 224),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        resize_mode="shortest",
    )
    frames = _frames(4, 480, 640, seed=1)
    ours = fit_batch(torch.from_numpy(frames), cfg).round().to(torch.uint8).numpy()
    for frame, mine in zip(frames, ours, strict=True):
        expected = fit_frame(frame, cfg)
        assert mine.shape == expected.shape
        assert np.abs(mine.astype(int) - expected.astype(int)).max() <= 1


def test_it_enlarges_small_frames_with_bicubic_like_the_cpu_path():
    frames = _frames(2, 120, 160, seed=2)
    ours = resize_batch(torch.from_numpy(frames), 224, 224).round().to(torch.uint8).numpy()
    for frame, mine in zip(frames, ours, strict=True):
        theirs = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_CUBIC)
        # Bicubic implementations differ at the borders and by rounding; close, not equal.
        assert np.abs(mine.astype(int) - theirs.astype(int)).mean() < 2.0
