"""Zero-shot anomaly scores: softmax over `logit_scale * cosine(image, class prompt)`.

With two classes the softmax reduces to a logistic of the scaled difference, which is
what `compute_anomaly_scores` evaluates (stably, in float64). The prototype used a fixed
scale of 100; by default the model's own learned `logit_scale` is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from .loader import LoadedModel
from .preprocess import fit_frame, preprocess_frames, to_tensor
from .prompts import Prompts, class_embedding, normalize_prompts

PROTOTYPE_LOGIT_SCALE = 100.0


def compute_anomaly_scores(
    normal_sims: npt.ArrayLike, anomaly_sims: npt.ArrayLike, logit_scale: float = 100.0
) -> np.ndarray:
    """Probability of the anomaly class from raw cosine similarities (pure numpy).

    Equal to `softmax(logit_scale * [normal, anomaly])[1]` for each pair.
    """
    normal = np.asarray(normal_sims, dtype=np.float64)
    anomaly = np.asarray(anomaly_sims, dtype=np.float64)
    if normal.shape != anomaly.shape:
        raise ValueError(
            f"normal and anomaly similarities differ in shape: {normal.shape} vs {anomaly.shape}"
        )
    if not np.isfinite(logit_scale) or logit_scale <= 0:
        raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
    logits = logit_scale * np.stack([normal, anomaly], axis=-1)
    logits -= logits.max(axis=-1, keepdims=True)  # no overflow for any scale
    weights = np.exp(logits)
    return weights[..., 1] / weights.sum(axis=-1)


def encode_images(loaded: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised fp32 image embeddings of a preprocessed batch.

    Separate from scoring so one forward pass can serve frames of several analyses, each
    then compared with its own prompts (the worker batches across cameras).
    """
    with torch.inference_mode():
        features = loaded.model.encode_image(pixels).float()
        # Normalise in fp32: a bf16 norm costs accuracy for nothing.
        return features / features.norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class ScoreBatch:
    normal: np.ndarray  # cosine similarity to the normal class, per image
    anomaly: np.ndarray  # cosine similarity to the anomaly class, per image
    score: np.ndarray  # probability of anomaly, per image

    def __len__(self) -> int:
        return len(self.score)


@dataclass(frozen=True)
class Box:
    """The most anomalous cell of a grid, in pixels of the original frame."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float


class Scorer:
    """Scores images against one analysis's normal and anomaly prompt ensembles."""

    def __init__(
        self,
        loaded: LoadedModel,
        normal_prompts: Prompts,
        anomaly_prompts: Prompts,
        logit_scale: float | None = None,
    ) -> None:
        self.loaded = loaded
        self.normal_prompts = normalize_prompts(normal_prompts, "normal")
        self.anomaly_prompts = normalize_prompts(anomaly_prompts, "anomaly")
        self.logit_scale = loaded.model_logit_scale if logit_scale is None else float(logit_scale)
        # (2, D) fp32: row 0 normal, row 1 anomaly.
        self.text = torch.stack(
            [
                class_embedding(loaded, self.normal_prompts),
                class_embedding(loaded, self.anomaly_prompts),
            ]
        )

    def score_tensor(self, pixels: torch.Tensor) -> ScoreBatch:
        """Score a preprocessed (N, 3, H, W) batch."""
        return self.score_features(encode_images(self.loaded, pixels))

    def score_features(self, features: torch.Tensor) -> ScoreBatch:
        """Score normalised image embeddings (from `encode_images`, possibly shared)."""
        with torch.inference_mode():
            sims = (features @ self.text.T).cpu().numpy().astype(np.float64)
        normal, anomaly = sims[:, 0], sims[:, 1]
        return ScoreBatch(
            normal, anomaly, compute_anomaly_scores(normal, anomaly, self.logit_scale)
        )

    def score_frames(self, frames_bgr: Sequence[np.ndarray], batch_size: int = 16) -> ScoreBatch:
        """Score BGR uint8 frames of any size, `batch_size` at a time."""
        parts = [
            self.score_tensor(preprocess_frames(frames_bgr[i : i + batch_size], self.loaded))
            for i in range(0, len(frames_bgr), batch_size)
        ]
        if not parts:
            empty = np.zeros(0)
            return ScoreBatch(empty, empty, empty)
        return ScoreBatch(
            np.concatenate([p.normal for p in parts]),
            np.concatenate([p.anomaly for p in parts]),
            np.concatenate([p.score for p in parts]),
        )

    def localize(self, frame_bgr: np.ndarray, grid: int = 4) -> Box:
        """Score a grid x grid tiling of the frame in one batch; return the worst cell."""
        h, w = frame_bgr.shape[:2]
        xs = np.linspace(0, w, grid + 1).round().astype(int)
        ys = np.linspace(0, h, grid + 1).round().astype(int)
        cells = [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(grid) for c in range(grid)]
        crops = [
            fit_frame(frame_bgr[y0:y1, x0:x1], self.loaded.preprocess) for x0, y0, x1, y1 in cells
        ]
        scores = self.score_tensor(to_tensor(crops, self.loaded)).score
        best = int(np.argmax(scores))
        x0, y0, x1, y1 = cells[best]
        return Box(int(x0), int(y0), int(x1), int(y1), float(scores[best]))
