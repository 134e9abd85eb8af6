"""Frame-level detection metrics for labelled clips: ROC-AUC, average precision, best F1.

The same definitions as scikit-learn's `roc_auc_score` (ties share their rank: the
trapezoidal area) and `average_precision_score` (the step-wise sum of precision times the
recall gained at each distinct threshold); tests/engine/test_engine_metrics.py holds them to
scikit-learn's results. Plain numpy, so the engine needs no scikit-learn at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BestF1:
    threshold: float  # flag frames whose score is >= this
    f1: float
    precision: float
    recall: float


def _curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Cumulative true and false positives at each distinct score, highest first."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D and equally long ({y.shape}, {s.shape})")
    if y.all() or not y.any():
        raise ValueError("the metrics need both anomalous and normal frames")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # The last index of each run of equal scores: one point per distinct threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), s[last]


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    tp, fp, _ = _curve(labels, scores)
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # the trapezoids


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    tp, fp, _ = _curve(labels, scores)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(labels: Sequence[int], scores: Sequence[float]) -> BestF1:
    """The threshold (among the scores) with the highest F1, and the F1 there."""
    tp, fp, thresholds = _curve(labels, scores)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    i = int(np.argmax(f1))
    return BestF1(float(thresholds[i]), float(f1[i]), float(precision[i]), float(recall[i]))
