"""Learning a camera's normal: a bounded memory of normal-frame embeddings, novelty as the
distance to its nearest neighbours, calibrated on the memory itself.

Django-free maths on L2-normalised embeddings (numpy, float32); the caller embeds frames
with the model (`views` says what to embed). Measured on a street scene (vtest.avi, random
ViT-B-32 weights; see docs/architecture.md): whole-frame novelty separates planted
departures well but also flags benign global changes (dusk, auto-exposure), so each frame is
normalised photometrically first (per-channel mean and spread), which removes those, and a
memory per cell of a 2x2 grid restores what the normalisation blunts (a new object in a
corner). A frame's novelty is the largest over its views.

- `Memory`: at most `capacity` vectors; past it, a greedy k-center coreset keeps the vectors
  that cover the set best (the most outlying normal frames survive, duplicates of a static
  scene do not). Novelty of a query = 1 - the mean cosine similarity of its `k` nearest
  members: one matrix product per batch.
- `Calibration`: the memory's own held-out novelties are the reference (each stretch of
  learning time against the rest). A frame scores 0.5, the automatic threshold, when its
  novelty lies MARGIN (2) spreads beyond the reference's 99th percentile, a spread being the
  reference's median-to-99th-percentile distance (floored at the views' median spread).
  On vtest.avi (random ViT-B-32, 30 s learned at 2 frames/s, the remaining 50 s tested) that
  flags none of the normal frames nor of those dimmed to 60 %, and all of a covered lens, a new
  object in a corner, a moved camera, a defocused camera and foreign footage.
- `NormalityModel`: one memory per view, plus an optional memory of anomaly exemplars:
  a frame closer to a known anomaly than to anything normal scores at least that closeness.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

GRID = 2  # cells per side of the cell views
CAPACITY = 2_000  # vectors per memory (a 2,000 x 512 float32 memory is 4 MB)
K = 3  # nearest neighbours averaged
QUANTILE = 0.99  # the reference's high quantile
MARGIN = 2.0  # spreads beyond it that score 0.5 (the automatic threshold)
BLOCKS = 5  # stretches of learning time left out in turn for the calibration reference
AUTO_THRESHOLD = 0.5
_SPREAD = 48.0  # the normalised frame's per-channel standard deviation (in 0-255)


def photometric_normalize(frame_bgr: np.ndarray) -> np.ndarray:
    """The frame with each channel shifted to mean 128 and scaled to a fixed spread.

    Dimming, auto-exposure and white-balance drift change a channel's mean and spread, not
    the scene: after this, dusk looks like noon to the model. A flat frame (a covered lens)
    stays flat (its spread is not blown up past what it has).
    """
    channels = frame_bgr.shape[-1] if frame_bgr.ndim == 3 else 1
    mean, std = (a.ravel() for a in cv2.meanStdDev(frame_bgr))
    gain = _SPREAD / np.maximum(std, 4.0)  # a flat channel is not amplified into noise
    # One 256-entry table per channel, applied by cv2.LUT: the same numbers as the float
    # arithmetic on every pixel, 14 times faster (it runs for every frame scored).
    levels = np.arange(256, dtype=np.float64)[:, None]
    table = np.clip((levels - mean) * gain + 128.0, 0, 255).astype(np.uint8)
    return cv2.LUT(frame_bgr, np.ascontiguousarray(table.reshape(1, 256, channels)))


def views(frame_bgr: np.ndarray, size: int | None = None, grid: int = GRID) -> list[np.ndarray]:
    """What to embed for a frame: the normalised whole frame, then its `grid` x `grid` cells
    (row by row); with `size`, each squashed to the model's square input, so that no border
    (where a new object may stand) is cropped away by the model's centre crop."""
    normalized = photometric_normalize(frame_bgr)
    height, width = normalized.shape[:2]
    cells = [
        normalized[
            row * height // grid : (row + 1) * height // grid,
            col * width // grid : (col + 1) * width // grid,
        ]
        for row in range(grid)
        for col in range(grid)
    ]
    out = [normalized, *cells]
    return out if size is None else [_squash(view, size) for view in out]


def _squash(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    interpolation = cv2.INTER_AREA if min(height, width) >= size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def k_center_coreset(vectors: np.ndarray, size: int) -> np.ndarray:
    """Indexes of `size` vectors chosen greedily, each the farthest from those chosen so far
    (a 2-approximation of the k-center problem, as PatchCore builds its memory bank)."""
    n = len(vectors)
    if n <= size:
        return np.arange(n)
    chosen = [0]
    # Cosine distance of every vector to its nearest chosen one.
    nearest = 1.0 - vectors @ vectors[0]
    for _ in range(size - 1):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - vectors @ vectors[pick])
    return np.asarray(chosen)


@dataclass
class Memory:
    """A bounded set of unit vectors; novelty is 1 - mean similarity of the k nearest."""

    capacity: int = CAPACITY
    k: int = K
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __len__(self) -> int:
        return len(self.vectors)

    def add(self, vectors: np.ndarray) -> None:
        new = _unit(vectors)
        merged = new if len(self) == 0 else np.concatenate([self.vectors, new])
        # Sorted: members keep the order they were learned in (calibration blocks by time).
        self.vectors = merged[np.sort(k_center_coreset(merged, self.capacity))]

    def closeness(self, queries: np.ndarray) -> np.ndarray:
        """Mean cosine similarity of each query's k nearest members (0 for an empty memory)."""
        queries = _unit(queries)
        if len(self) == 0:
            return np.zeros(len(queries), np.float32)
        similarities = queries @ self.vectors.T
        k = min(self.k, len(self))
        top = np.partition(similarities, -k, axis=1)[:, -k:]
        return top.mean(axis=1)

    def novelty(self, queries: np.ndarray) -> np.ndarray:
        return 1.0 - self.closeness(queries)

    def held_out(self, blocks: int = BLOCKS) -> np.ndarray:
        """Each member's novelty against the members outside its block (blocks in learning
        order): the reference for calibration.

        Leaving one member out is not enough: consecutive frames of a video are near
        duplicates, so each member's nearest neighbours are its own neighbours in time and
        the reference comes out far tighter than the distance of a new normal frame to the
        memory. Leaving out a whole stretch of time measures what a later frame will meet.
        """
        n = len(self)
        blocks = min(blocks, n // 2)
        if blocks < 2:
            return np.zeros(n, np.float32)
        edges = np.linspace(0, n, blocks + 1).astype(int)
        out = np.empty(n, np.float32)
        for start, end in itertools.pairwise(edges):
            others = np.concatenate([self.vectors[:start], self.vectors[end:]])
            similarities = self.vectors[start:end] @ others.T
            k = min(self.k, len(others))
            top = np.partition(similarities, -k, axis=1)[:, -k:]
            out[start:end] = 1.0 - top.mean(axis=1)
        return out


@dataclass(frozen=True)
class Calibration:
    """Maps novelty to a score in [0, 1] from a reference of normal novelties.

    `spread` is the reference's median-to-QUANTILE distance (or a floor the caller gives:
    a stretch of the frame that never changed while learning has almost no spread, and the
    first person to walk through it would otherwise look like a planted object). A frame
    scores 0.5 at MARGIN spreads beyond the reference's QUANTILE.
    """

    median: float
    high: float  # the reference's QUANTILE
    spread: float

    @classmethod
    def from_reference(
        cls, reference: np.ndarray, quantile: float = QUANTILE, min_spread: float = 1e-6
    ) -> Calibration:
        if len(reference) == 0:
            return cls(0.0, 0.0, max(min_spread, 1e-6))
        median = float(np.median(reference))
        high = float(np.quantile(reference, quantile))
        return cls(median, high, max(high - median, min_spread, 1e-6))

    def score(self, novelty: np.ndarray) -> np.ndarray:
        z = (np.asarray(novelty, np.float64) - self.high) / self.spread
        return (1.0 / (1.0 + np.exp(-2.2 * (z - MARGIN)))).astype(np.float32)


@dataclass
class NormalityModel:
    """Per-view memories of normal frames, one of anomaly exemplars, and their calibration.

    Embeddings come as arrays of shape (frames, views, dim), views as `views()` orders them.
    """

    n_views: int = 1 + GRID * GRID
    capacity: int = CAPACITY
    k: int = K
    normal: list[Memory] = field(default_factory=list)
    anomalies: Memory = field(default_factory=Memory)
    calibrations: list[Calibration] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.normal:
            self.normal = [Memory(self.capacity, self.k) for _ in range(self.n_views)]

    @property
    def learned(self) -> int:
        return len(self.normal[0])

    def learn(self, embeddings: np.ndarray) -> None:
        """Add normal frames and recalibrate (cost: one n x n product per view)."""
        embeddings = self._check(embeddings)
        for view, memory in enumerate(self.normal):
            memory.add(embeddings[:, view])
        self.recalibrate()

    def recalibrate(self) -> None:
        """Calibrate every view against its memory's held-out novelties."""
        references = [m.held_out() for m in self.normal]
        spreads = [Calibration.from_reference(r).spread for r in references]
        # The views' median spread is the floor of each view's (see Calibration).
        floor = float(np.median(spreads))
        self.calibrations = [Calibration.from_reference(r, min_spread=floor) for r in references]

    def learn_anomalies(self, embeddings: np.ndarray) -> None:
        """Add confirmed anomalies (whole-frame views only: what the operator saw)."""
        self.anomalies.add(self._check(embeddings)[:, 0])

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw novelty per frame: the largest over views."""
        embeddings = self._check(embeddings)
        per_view = [m.novelty(embeddings[:, v]) for v, m in enumerate(self.normal)]
        return np.max(np.stack(per_view, axis=1), axis=1)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated score in [0, 1] per frame; AUTO_THRESHOLD is the automatic threshold."""
        embeddings = self._check(embeddings)
        if not self.calibrations:
            raise ValueError("nothing learned yet: learn() normal frames first")
        closeness = [m.closeness(embeddings[:, v]) for v, m in enumerate(self.normal)]
        per_view = [
            cal.score(1.0 - near) for near, cal in zip(closeness, self.calibrations, strict=True)
        ]
        score = np.max(np.stack(per_view, axis=1), axis=1)
        if len(self.anomalies):
            # Closer to a confirmed anomaly than to anything normal: at least that close.
            near_anomaly = self.anomalies.closeness(embeddings[:, 0])
            near_normal = closeness[0]
            trigger = np.where(near_anomaly > near_normal, near_anomaly, 0.0)
            score = np.maximum(score, np.clip(trigger, 0.0, 1.0))
        return score.astype(np.float32)

    def _check(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 3 or embeddings.shape[1] != self.n_views:
            raise ValueError(
                f"expected embeddings of shape (frames, {self.n_views}, dim), "
                f"got {embeddings.shape}"
            )
        return embeddings


def fuse(prompt_score: Sequence[float] | np.ndarray, normality_score: np.ndarray) -> np.ndarray:
    """`combined` mode: the larger of the prompt probability and the calibrated novelty.

    Either kind of evidence alone may raise an alarm: the prompts name what the operator
    fears (a fire the camera has seen before is still a fire), the memory catches what
    nobody thought to name. An average would let a confident normal prompt hide a novel
    frame, and the reverse.
    """
    return np.maximum(np.asarray(prompt_score, np.float32), np.asarray(normality_score))
