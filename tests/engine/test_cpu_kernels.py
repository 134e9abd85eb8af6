"""A bf16 ViT tower on the CPU runs on packed oneDNN kernels (detection.engine.cpu_kernels):
the same embeddings, and anything it cannot pack or check is left as it was."""

from __future__ import annotations

import copy
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from bench.benchmark import model_gflops
from detection.engine import ModelSpec, cpu_kernels, load_model
from detection.engine import loader as loader_module
from detection.engine.cpu_kernels import (
    PackedMLP,
    PackedSelfAttention,
    kernels_available,
    pack_image_tower,
)

pytestmark = pytest.mark.skipif(not kernels_available(), reason="PyTorch built without oneDNN")


@pytest.fixture(autouse=True)
def fresh_loads(monkeypatch):
    monkeypatch.setattr(loader_module, "_cache", {})


def spec(tiny_model, precision: str) -> ModelSpec:
    return ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", precision)


def embeddings(model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model.encode_image(pixels.to(dtype)).float()


def test_it_runs_a_bf16_vit_tower_on_packed_kernels_with_the_same_embeddings(tiny_model):
    reference = copy.deepcopy(load_model(spec(tiny_model, "fp32")).model).to(torch.bfloat16)
    loaded = load_model(spec(tiny_model, "bf16"))
    assert loaded.packed_kernels
    blocks = loaded.model.visual.transformer.resblocks
    assert all(isinstance(b.attn, PackedSelfAttention) for b in blocks)
    assert all(isinstance(b.mlp, PackedMLP) and b.mlp.c_fc.post_op == "gelu" for b in blocks)
    got, expected = embeddings(loaded.model, torch.bfloat16), embeddings(reference, torch.bfloat16)
    assert got.shape == expected.shape == (4, 32)
    assert F.cosine_similarity(got, expected).min() > 0.999
    # The text tower is not the image tower: left as it was.
    assert isinstance(loaded.model.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)


def test_it_counts_the_same_flops_packed_or_not(tiny_model):
    unpacked = model_gflops(load_model(spec(tiny_model, "fp32")))
    assert model_gflops(load_model(spec(tiny_model, "bf16"))) == pytest.approx(unpacked)


def test_it_keeps_quick_gelu_apart_from_the_product(tiny_model):
    model = open_clip.create_model("tiny-clip", force_quick_gelu=True).eval().to(torch.bfloat16)
    reference = copy.deepcopy(model)
    assert pack_image_tower(model.visual, (224, 224))
    mlp = model.visual.transformer.resblocks[0].mlp
    assert isinstance(mlp.act, QuickGELU) and mlp.c_fc.post_op == "none"
    got, expected = embeddings(model, torch.bfloat16), embeddings(reference, torch.bfloat16)
    assert F.cosine_similarity(got, expected).min() > 0.999


def test_it_leaves_fp32_models_and_other_towers_alone(tiny_model):
    loaded = load_model(spec(tiny_model, "fp32"))
    assert not loaded.packed_kernels
    assert isinstance(
        loaded.model.visual.transformer.resblocks[0].attn, torch.nn.MultiheadAttention
    )
    convolutional = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)).to(torch.bfloat16)
    assert not pack_image_tower(convolutional, (224, 224))


@pytest.mark.parametrize(
    "broken",
    [
        lambda self, x: torch.zeros(*x.shape[:-1], self.out_features, dtype=x.dtype),
        lambda self, x: (_ for _ in ()).throw(RuntimeError("no such operator")),
    ],
    ids=["wrong embeddings", "missing operator"],
)
def test_it_keeps_pytorchs_kernels_when_the_packed_ones_fail_their_check(
    tiny_model, monkeypatch, caplog, broken
):
    monkeypatch.setattr(cpu_kernels.PackedLinear, "forward", broken)
    with caplog.at_level(logging.WARNING, logger="detection.engine.cpu_kernels"):
        loaded = load_model(spec(tiny_model, "bf16"))
    assert not loaded.packed_kernels
    blocks = loaded.model.visual.transformer.resblocks
    assert all(isinstance(b.attn, torch.nn.MultiheadAttention) for b in blocks)
    assert [
        r.getMessage() for r in caplog.records if "packed CPU kernels not used" in r.getMessage()
    ]
    reference = copy.deepcopy(load_model(spec(tiny_model, "fp32")).model).to(torch.bfloat16)
    got, expected = embeddings(loaded.model, torch.bfloat16), embeddings(reference, torch.bfloat16)
    assert torch.equal(got, expected)  # the model it was, exactly
