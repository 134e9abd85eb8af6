"""A tiny CLIP checkpoint: loaded through the same open_clip code path as real weights.

`DETECTION_MODEL=<config.json>`, `DETECTION_PRETRAINED=<checkpoint file>`: the real
tokenizer and 224 px input, but two narrow layers per tower, about 3.5 M parameters (most
of them the token embedding), random weights written once per test session.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class TinyModel:
    config: Path
    checkpoint: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess (manage.py) that should use this model."""
        return {
            **os.environ,
            "DETECTION_MODEL": str(self.config),
            "DETECTION_PRETRAINED": str(self.checkpoint),
            "DETECTION_DEVICE": "cpu",
            "DETECTION_PRECISION": "fp32",
        }


def write_tiny_model(folder: Path) -> TinyModel:
    """Write the config and a seeded random checkpoint into `folder`."""
    import open_clip
    import torch

    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    # Random init gives a logit scale of 1/0.07; a trained CLIP's is ~100. Use a trained-like
    # value so scores spread out as they do with real weights.
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
    checkpoint = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return TinyModel(config, checkpoint)


def cache_default_weights(folder: Path) -> Path:
    """A stand-in for the default weights in a Hugging Face cache at `folder` (the hub's
    models--org--repo/refs/main + snapshots/<commit>/ layout), so `detection.W004` (weights
    neither cached nor reachable) stays quiet on a machine without internet."""
    repo = folder / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    path = repo / "snapshots" / ("0" * 40) / "open_clip_pytorch_model.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by the check")
    return path
