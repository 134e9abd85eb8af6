"""Shared fixtures: a tiny CLIP checkpoint, settings that use it, videos made on the fly.

No test downloads anything: the tiny model's config and random weights are written to a
temporary directory once per session and loaded through the same open_clip code path as
real weights (`DETECTION_MODEL=<config.json>`, `DETECTION_PRETRAINED=<checkpoint file>`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# A CLIP with the real tokenizer and 224 px input, but two narrow layers per tower:
# about 3.5 M parameters, most of them the token embedding.
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny-clip")
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


@pytest.fixture
def tiny_settings(settings, tiny_model: TinyModel):
    settings.DETECTION_MODEL = str(tiny_model.config)
    settings.DETECTION_PRETRAINED = str(tiny_model.checkpoint)
    settings.DETECTION_DEVICE = "cpu"
    settings.DETECTION_PRECISION = "fp32"
    settings.DETECTION_BATCH_SIZE = 4
    settings.DETECTION_LOGIT_SCALE = None
    return settings


def scene(height: int = 240, width: int = 320, seed: int = 0, t: float = 0.0) -> np.ndarray:
    """A real-looking BGR frame: gradients, edges, shapes, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            120 + 80 * np.sin(x / width * 3 + seed),
            100 + 60 * np.cos(y / height * 4 + seed),
            90 + 50 * np.sin((x + y) / (width + height) * 5),
        ],
        axis=-1,
    )
    for i in range(6):
        cx = int((rng.uniform(0.1, 0.9) * width + t * 20 * (i + 1)) % width)
        cy = int(rng.uniform(0.1, 0.9) * height)
        r = int(rng.uniform(0.05, 0.2) * min(height, width))
        cv2.circle(img, (cx, cy), r, rng.uniform(0, 255, 3).tolist(), -1)
    cv2.rectangle(img, (width // 8, height // 2), (width // 3, height - 10), (30, 200, 40), 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# Container/codec pairs OpenCV's bundled FFmpeg writes on this machine (H.264 it cannot).
CONTAINERS = {
    "mp4": "mp4v",
    "mov": "mp4v",
    "m4v": "mp4v",
    "mkv": "mp4v",
    "avi": "MJPG",
    "webm": "VP90",
}

VideoFactory = Callable[..., Path]


@pytest.fixture
def make_video(tmp_path: Path) -> VideoFactory:
    """make_video(name, frames=20, fps=10.0, size=(320, 240), black=(), codec=None)."""

    def make(
        name: str = "clip.mp4",
        frames: int = 20,
        fps: float = 10.0,
        size: tuple[int, int] = (320, 240),
        black: Sequence[int] = (),
        codec: str | None = None,
    ) -> Path:
        path = tmp_path / name
        fourcc = codec or CONTAINERS[path.suffix.lstrip(".").lower()]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        assert writer.isOpened(), f"OpenCV cannot write {fourcc} in {path.suffix}"
        for i in range(frames):
            frame = (
                np.zeros((size[1], size[0], 3), np.uint8)
                if i in black
                else scene(size[1], size[0], seed=1, t=i / fps)
            )
            writer.write(frame)
        writer.release()
        return path

    return make


def manage(*args: str, env: dict[str, str], timeout: float = 180):
    """Run `python manage.py ARGS` in a subprocess, as an operator would."""
    import subprocess

    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A file-backed SQLite test database, so worker subprocesses can share it."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture
def media(tmp_path: Path, settings) -> Path:
    """MEDIA_ROOT in tmp_path/media; video files may be read anywhere in tmp_path."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    settings.DETECTION_VIDEO_DIRS = [tmp_path]
    return tmp_path


@pytest.fixture
def subprocess_env(tiny_model: TinyModel, settings, media: Path) -> dict[str, str]:
    """Environment for manage.py subprocesses that share the test database and settings."""
    from django.db import connection

    env = dict(tiny_model.env)
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    env["MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    env["DETECTION_VIDEO_DIRS"] = ":".join(str(d) for d in settings.DETECTION_VIDEO_DIRS)
    env["DJANGO_LOG_LEVEL"] = "INFO"
    return env


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    # The factories set real passwords; PBKDF2 at full strength costs ~0.25 s per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
