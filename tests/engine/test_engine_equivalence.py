"""The engine against open_clip's own reference computation, on the same checkpoint."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from detection.engine import ModelSpec, Scorer, compute_anomaly_scores, load_model
from detection.engine.preprocess import preprocess_frames
from tests.support.media import scene

NORMAL = ["a quiet street", "an empty parking lot"]
ANOMALY = ["a car on fire", "people fighting"]


def reference(loaded, frame_bgr: np.ndarray, normal: list[str], anomaly: list[str]):
    """open_clip as its README uses it: PIL + its transform, batch of 1, fp32, prompt ensemble."""
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        pixels = loaded.reference_transform(Image.fromarray(frame_bgr[:, :, ::-1])).unsqueeze(0)
        image = model.encode_image(pixels.to(loaded.dtype)).float()
        image = image / image.norm(dim=-1, keepdim=True)
        classes = []
        for prompts in (normal, anomaly):
            text = model.encode_text(tok(prompts)).float()
            text = text / text.norm(dim=-1, keepdim=True)
            mean = text.mean(dim=0)
            classes.append(mean / mean.norm())
        sims = (image @ torch.stack(classes).T)[0].numpy()
    return sims, image


FRAMES = [
    scene(240, 320, seed=0),  # landscape, shrunk
    scene(576, 768, seed=1),  # vtest.avi's size
    scene(720, 1280, seed=2),  # 16:9 HD
    scene(400, 300, seed=3),  # portrait
    scene(120, 160, seed=4),  # smaller than the model input: enlarged
]


@pytest.fixture
def tiny(tiny_model):
    return load_model(ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"))


def test_it_matches_open_clip_exactly_on_the_same_pixels(tiny):
    scorer = Scorer(tiny, NORMAL, ANOMALY, logit_scale=100.0)
    for frame in FRAMES:
        (ref_n, ref_a), _ = reference(tiny, frame, NORMAL, ANOMALY)
        pixels = tiny.reference_transform(Image.fromarray(frame[:, :, ::-1])).unsqueeze(0)
        ours = scorer.score_tensor(pixels)
        np.testing.assert_allclose([ours.normal[0], ours.anomaly[0]], [ref_n, ref_a], atol=1e-5)
        np.testing.assert_allclose(
            ours.score, compute_anomaly_scores([ref_n], [ref_a], 100.0), atol=1e-4
        )


def test_it_preprocesses_like_open_clip(tiny):
    """Our OpenCV preprocessing vs open_clip's PIL transform, on real-looking frames.

    Bound: pixel values (normalised units) within 0.03 on average (measured 0.009-0.020),
    image embeddings with a cosine above 0.999, similarities within 0.005 and the scale-100
    score within 0.03.
    """
    scorer = Scorer(tiny, NORMAL, ANOMALY, logit_scale=100.0)
    for frame in FRAMES:
        ref_pixels = tiny.reference_transform(Image.fromarray(frame[:, :, ::-1])).unsqueeze(0)
        our_pixels = preprocess_frames([frame], tiny)
        assert our_pixels.shape == ref_pixels.shape
        assert (our_pixels - ref_pixels).abs().mean() < 0.03
        (ref_n, ref_a), ref_image = reference(tiny, frame, NORMAL, ANOMALY)
        with torch.no_grad():
            ours_image = tiny.model.encode_image(our_pixels).float()
        ours_image = ours_image / ours_image.norm(dim=-1, keepdim=True)
        assert float((ours_image * ref_image).sum()) > 0.999
        ours = scorer.score_frames([frame])
        assert abs(ours.normal[0] - ref_n) < 0.005
        assert abs(ours.anomaly[0] - ref_a) < 0.005
        ref_score = compute_anomaly_scores(ref_n, ref_a, 100.0)
        assert abs(ours.score[0] - ref_score) < 0.03


def test_it_scores_a_batch_like_one_at_a_time(tiny):
    scorer = Scorer(tiny, NORMAL, ANOMALY)
    together = scorer.score_frames(FRAMES, batch_size=8)
    alone = [scorer.score_frames([f]).score[0] for f in FRAMES]
    np.testing.assert_allclose(together.score, alone, atol=1e-5)


@pytest.mark.slow
def test_it_runs_the_default_vit_b_16_architecture():
    """The one ViT-B sized check: the default model path, random weights, fp32 and bf16."""
    loaded = load_model(ModelSpec("ViT-B-16", "none", "cpu", "fp32"))
    assert loaded.random_weights
    assert loaded.preprocess.size == (224, 224)
    assert sum(p.numel() for p in loaded.model.visual.parameters()) > 80_000_000
    frames = FRAMES[:2]
    scorer = Scorer(loaded, NORMAL, ANOMALY)
    fp32 = scorer.score_frames(frames)
    for frame, n in zip(frames, fp32.normal, strict=True):
        (ref_n, _), _ = reference(loaded, frame, NORMAL, ANOMALY)
        assert abs(n - ref_n) < 0.01

    # The same weights cast to bf16 (as precision=auto does on a bf16-capable CPU).
    bf16 = copy.copy(loaded)
    bf16.model = copy.deepcopy(loaded.model).to(torch.bfloat16)
    bf16.dtype = torch.bfloat16
    bf16.text_cache = {}
    low = Scorer(bf16, NORMAL, ANOMALY).score_frames(frames)
    np.testing.assert_allclose(low.normal, fp32.normal, atol=0.02)
    np.testing.assert_allclose(low.anomaly, fp32.anomaly, atol=0.02)
