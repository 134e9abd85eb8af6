from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.engine import compute_anomaly_scores


def prototype_scores(normal: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """The prototype's computation: softmax over 100 * [cos normal, cos anomaly] in torch."""
    logits = 100.0 * torch.tensor(np.stack([normal, anomaly], axis=-1), dtype=torch.float32)
    return logits.softmax(dim=-1)[..., 1].numpy()


def test_it_reproduces_the_prototype_with_scale_100():
    rng = np.random.default_rng(3)
    normal = rng.uniform(0.15, 0.35, 500)
    anomaly = normal + rng.normal(0, 0.02, 500)
    ours = compute_anomaly_scores(normal, anomaly, logit_scale=100.0)
    # The prototype computed in float32; we compute in float64.
    np.testing.assert_allclose(ours, prototype_scores(normal, anomaly), atol=1e-5)


def test_it_gives_known_values():
    # Equal similarities: undecided. A 0.01 margin at scale 100: logistic(1) = 0.7311.
    scores = compute_anomaly_scores([0.2, 0.2, 0.21], [0.2, 0.21, 0.2])
    np.testing.assert_allclose(scores, [0.5, 1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))], atol=1e-9)


def test_it_is_stable_for_extreme_scales():
    scores = compute_anomaly_scores([1.0, -1.0], [-1.0, 1.0], logit_scale=1e6)
    assert np.all(np.isfinite(scores))
    np.testing.assert_array_equal(scores, [0.0, 1.0])


def test_it_keeps_the_input_shape():
    assert compute_anomaly_scores(np.zeros((3, 4)), np.ones((3, 4))).shape == (3, 4)
    assert compute_anomaly_scores(0.1, 0.3).shape == ()


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_it_refuses_a_non_positive_scale(scale):
    with pytest.raises(ValueError, match="logit_scale"):
        compute_anomaly_scores([0.1], [0.2], logit_scale=scale)


def test_it_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        compute_anomaly_scores([0.1, 0.2], [0.2])
