from __future__ import annotations

import logging

import pytest
import torch
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from detection.engine import ModelSpec, PromptError, Scorer, load_model
from detection.engine.prompts import class_embedding, normalize_prompts


@pytest.fixture
def tiny(tiny_model):
    return load_model(ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"))


def test_it_ensembles_like_open_clip(tiny):
    prompts = ("a photo of a street", "a quiet road at night", "a car park")
    ours = class_embedding(tiny, prompts)
    # open_clip's zero-shot classifier with the prompts as templates of one class.
    theirs = build_zero_shot_classifier(
        tiny.model,
        tiny.tokenizer,
        classnames=["x"],
        templates=[lambda _c, p=p: p for p in prompts],
    )[:, 0]
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
    assert float(ours.norm()) == pytest.approx(1.0, abs=1e-5)


def test_it_caches_embeddings_per_prompt_tuple(tiny):
    first = class_embedding(tiny, ("a dog",))
    assert class_embedding(tiny, ("a dog",)) is first
    assert class_embedding(tiny, ("a cat",)) is not first


def test_it_splits_text_into_one_prompt_per_line():
    assert normalize_prompts("  a street \n\n a road\n", "normal") == ("a street", "a road")
    assert normalize_prompts(["a", " b "], "normal") == ("a", "b")


@pytest.mark.parametrize("empty", ["", "   \n  ", [], ["", " "], None])
def test_it_refuses_an_empty_prompt(empty):
    with pytest.raises(PromptError, match="anomaly prompt is"):
        normalize_prompts(empty, "anomaly")


def test_it_warns_when_a_prompt_is_truncated(tiny, caplog):
    long_prompt = "a very long description of a busy street " * 20
    with caplog.at_level(logging.WARNING, logger="detection.engine.prompts"):
        Scorer(tiny, [long_prompt], ["a fire"])
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_it_accepts_prompts_at_the_context_limit_silently(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="detection.engine.prompts"):
        Scorer(tiny, ["a quiet street"], ["a fire"])
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
