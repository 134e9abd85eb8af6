"""Model presets (DETECTION_MODEL=vit-b-32, mobileclip2-s0, ...): each names an open_clip model
and the weights we recommend for it, old settings keep meaning what they meant, and the
models behind the presets build and run through the loader's own path (random weights:
nothing is downloaded). docs/models.md has the measured trade-offs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch

from detection.engine import ModelSpec, load_model
from detection.engine import modelspec as ms
from detection.engine.modelspec import PRESETS, SpecError
from tests.support import ROOT
from tests.support.processes import SETTINGS_PREFIXES


@pytest.mark.parametrize("key", list(PRESETS))
def test_it_resolves_each_preset_to_its_model_and_weights(key):
    preset = PRESETS[key]

    model = ms.resolve_model_name(key)
    assert model == preset.model
    assert ms.resolve_pretrained(model, ms.default_pretrained(key)) == preset.pretrained
    # The table is checked against the installed open_clip, not only against itself.
    assert preset.pretrained in open_clip.list_pretrained_tags_by_model(preset.model)
    assert 0 < preset.imagenet_top1 < 100
    assert preset.source.startswith((ms.OPEN_CLIP_RESULTS, ms.MOBILECLIP_README))


@pytest.mark.parametrize("spelling", ["ViT-B-32", "vit-b-32", "VIT_B_32", " vit-b-32 "])
def test_it_takes_a_preset_by_its_open_clip_name_in_any_case(spelling):
    assert ms.resolve_model_name(spelling) == "ViT-B-32"
    assert ms.default_pretrained(spelling) == "laion2b_s34b_b79k"


def test_it_keeps_the_settings_that_worked_before_presets():
    assert ms.resolve_model_name("ViT-B-16") == "ViT-B-16"
    assert ms.default_pretrained("ViT-B-16") == "laion2b_s34b_b88k"
    # Models outside the table keep the project's default tag, and any tag of their own.
    assert ms.resolve_model_name("RN50") == "RN50"
    assert ms.default_pretrained("RN50") == ms.DEFAULT_PRETRAINED == "laion2b_s34b_b88k"
    assert ms.resolve_pretrained("RN50", "OPENAI") == "openai"
    # A preset's model still takes any tag open_clip has for it, a file, or none.
    assert ms.resolve_pretrained("ViT-B-16", "dfn2b") == "dfn2b"
    assert ms.resolve_pretrained("MobileCLIP2-S0", "none") is None
    assert ms.default_pretrained("hf-hub:org/repo") == ms.DEFAULT_PRETRAINED


def test_it_still_loads_a_tiny_open_clip_model_through_the_same_path(tiny_model):
    assert ms.preset_for(str(tiny_model.config)) is None
    assert ms.resolve_model_name(str(tiny_model.config)) == "tiny-clip"
    loaded = load_model(
        ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32")
    )
    assert loaded.preprocess.size == (224, 224) and loaded.precision == "fp32"


def test_it_gives_a_checkpoint_file_the_preprocessing_its_model_was_trained_with():
    # MobileCLIP's every tag wants mean 0, std 1, bilinear: a file of it gets that too.
    assert ms.checkpoint_preprocessing("MobileCLIP2-S0") == {
        "image_mean": (0.0, 0.0, 0.0),
        "image_std": (1.0, 1.0, 1.0),
        "image_interpolation": "bilinear",
        "image_resize_mode": "shortest",
    }
    # ViT-B-16's tags all want open_clip's defaults (OpenAI's mean and std, bicubic): the
    # README's offline checkpoint loads exactly as before.
    assert ms.checkpoint_preprocessing("ViT-B-16")["image_mean"] == open_clip.OPENAI_DATASET_MEAN
    # ViT-L-14's tags disagree (laion2b: mean 0.5): a file alone does not say, so no guess.
    assert ms.checkpoint_preprocessing("ViT-L-14") == {}
    assert ms.checkpoint_preprocessing("tiny-clip-never-registered") == {}


@pytest.mark.parametrize("name", ["mobileclip3-s0", "vit-b-64", "small"])
def test_it_names_every_preset_when_the_model_is_unknown(name):
    with pytest.raises(SpecError) as refused:
        ms.resolve_model_name(name)
    assert refused.value.problem == "model"
    assert f"DETECTION_MODEL={name!r}" in str(refused.value)
    for key in PRESETS:
        assert key in refused.value.hint
    assert "docs/models.md" in refused.value.hint


def test_it_points_a_preset_with_another_models_tag_at_its_own_weights():
    # DETECTION_MODEL changed to a preset, DETECTION_PRETRAINED left at ViT-B-16's tag.
    with pytest.raises(SpecError) as refused:
        ms.resolve_pretrained(ms.resolve_model_name("vit-b-32"), "laion2b_s34b_b88k")
    assert refused.value.problem == "tag"
    assert "Unset it for the preset's own weights (laion2b_s34b_b79k)" in refused.value.hint
    assert "laion2b_s34b_b79k" in refused.value.hint.split("Valid tags")[1]


def test_it_suggests_the_preset_a_typo_was_meant_to_be():
    with pytest.raises(SpecError, match=r"Did you mean: .*mobileclip2-s0"):
        ms.resolve_model_name("mobilclip2-s0")


SETTINGS_DUMP = """
import importlib, json, os, sys
out = {}
for case in json.loads(sys.argv[1]):
    for name in ("DETECTION_MODEL", "DETECTION_PRETRAINED"):
        os.environ.pop(name, None)
    os.environ.update(case)
    sys.modules.pop("portal.settings", None)
    s = importlib.import_module("portal.settings")
    out[json.dumps(case)] = [s.DETECTION_MODEL, s.DETECTION_PRETRAINED]
print(json.dumps(out))
"""


def test_it_lets_an_unset_pretrained_setting_follow_the_preset(tmp_path):
    cases = [
        {},
        {"DETECTION_MODEL": "vit-b-32"},
        {"DETECTION_MODEL": "mobileclip2-s2"},
        {"DETECTION_MODEL": "vit-b-32", "DETECTION_PRETRAINED": "none"},
        {"DETECTION_MODEL": "ViT-B-16", "DETECTION_PRETRAINED": "openai"},
        {"DETECTION_MODEL": "RN50"},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    done = subprocess.run(
        [sys.executable, "-c", SETTINGS_DUMP, json.dumps(cases)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = [json.loads(done.stdout)[json.dumps(case)] for case in cases]
    assert got == [
        ["ViT-B-16", "laion2b_s34b_b88k"],
        ["vit-b-32", "laion2b_s34b_b79k"],
        ["mobileclip2-s2", "dfndr2b"],
        ["vit-b-32", "none"],
        ["ViT-B-16", "openai"],
        ["RN50", "laion2b_s34b_b88k"],
    ]


def test_it_lists_every_preset_with_its_published_accuracy_in_the_docs():
    text = (ROOT / "docs" / "models.md").read_text()
    for preset in PRESETS.values():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{preset.key}`")), "")
        assert preset.pretrained in row, preset.key
        assert f"{preset.imagenet_top1:g}" in row, preset.key


@pytest.mark.slow  # ~5-10 s on 2 cores: timm's import, four model builds, first oneDNN calls
@pytest.mark.parametrize("key", ["mobileclip2-s0"])
def test_it_builds_mobileclip2_with_random_weights_and_folds_its_branches(key, tmp_path):
    pytest.importorskip("timm")
    from open_clip.timm_model import TimmModel

    loaded = load_model(ModelSpec(key, "none", "cpu", "fp32"))
    assert isinstance(loaded.model.visual, TimmModel)
    assert loaded.preprocess.size == (256, 256)
    # Offline, from a checkpoint file: MobileCLIP's own preprocessing, not open_clip's
    # defaults (which skew every embedding of these weights).
    checkpoint = tmp_path / "mobileclip2.pt"
    torch.save(open_clip.create_model(PRESETS[key].model).state_dict(), checkpoint)
    from_file = load_model(ModelSpec(key, str(checkpoint), "cpu", "fp32"))
    assert from_file.preprocess.mean == (0.0, 0.0, 0.0)
    assert from_file.preprocess.std == (1.0, 1.0, 1.0)
    assert from_file.preprocess.interpolation == "bilinear"
    # Reparameterised for inference (Apple's instructions): every MobileOne-style block
    # now runs one folded convolution.
    folded = [m for m in loaded.model.visual.modules() if hasattr(m, "reparam_conv")]
    assert folded and all(m.reparam_conv is not None for m in folded)

    # Same outputs as the unfolded tower with the same weights (to float rounding).
    from detection.engine.loader import _reparameterize

    reference = open_clip.create_model(PRESETS[key].model, pretrained=None).eval()
    folded_copy = copy.deepcopy(reference)
    _reparameterize(folded_copy)
    pixels = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = reference.encode_image(pixels, normalize=True)
        got = folded_copy.encode_image(pixels, normalize=True)
        text = loaded.model.encode_text(loaded.tokenizer(["a quiet street"]), normalize=True)
    assert torch.nn.functional.cosine_similarity(want, got).min() > 0.9999
    assert got.shape == (2, 512) and text.shape == (1, 512)
