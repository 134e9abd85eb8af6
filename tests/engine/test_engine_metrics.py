"""Frame-level metrics (detection/engine/metrics.py) against scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from detection.engine.metrics import average_precision, best_f1, roc_auc


def cases():
    rng = np.random.default_rng(0)
    for n, rounding in ((50, None), (500, 1), (2000, 2)):
        labels = rng.random(n) < 0.3
        scores = rng.random(n) + 0.4 * labels
        if rounding is not None:
            scores = np.round(scores, rounding)  # ties, as a coarse scorer makes
        yield labels.astype(int), scores


@pytest.mark.parametrize(("labels", "scores"), list(cases()))
def test_it_agrees_with_scikit_learn(labels, scores):
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = best_f1(labels, scores)
    assert best.f1 == pytest.approx(f1[:-1].max(), abs=1e-12)
    assert best.threshold == pytest.approx(thresholds[int(np.argmax(f1[:-1]))])


def test_it_scores_a_perfect_and_a_useless_detector():
    labels = [0, 0, 1, 1]
    assert roc_auc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert average_precision(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5
    best = best_f1(labels, [0.1, 0.2, 0.8, 0.9])
    assert (best.threshold, best.f1, best.precision, best.recall) == (0.8, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], []])
def test_it_refuses_labels_of_one_class(labels):
    with pytest.raises(ValueError):
        roc_auc(labels, [0.5] * len(labels))
