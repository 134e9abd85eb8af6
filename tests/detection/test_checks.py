from __future__ import annotations

from pathlib import Path

import pytest
import torch
from django.core.checks import Error, Warning
from django.core.checks.registry import registry
from django.test import override_settings

from detection import checks
from detection.engine import ModelLoadError, ModelSpec, load_model, modelspec
from tests.support.processes import manage


def _ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_it_registers_every_check_under_the_detection_tag():
    registered = registry.get_checks()
    for check in checks.ALL_CHECKS:
        assert check in registered
        assert checks.TAG in check.tags


# --- DETECTION_MODEL ------------------------------------------------------------------


@override_settings(DETECTION_MODEL="ViT-B-16")
def test_it_accepts_a_builtin_model():
    assert checks.check_model() == []


@override_settings(DETECTION_MODEL="ViT-B-61")
def test_it_flags_an_unknown_model_and_suggests_close_names():
    [message] = checks.check_model()
    assert isinstance(message, Error)
    assert message.id == "detection.E001"
    assert "ViT-B-61" in message.msg
    assert "ViT-B-16" in message.hint


@override_settings(DETECTION_MODEL="hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K")
def test_it_accepts_hf_hub_models_without_a_network_lookup():
    assert checks.check_model() == []


def test_it_requires_a_local_dir_model_to_exist(tmp_path):
    with override_settings(DETECTION_MODEL=f"local-dir:{tmp_path / 'missing'}"):
        assert _ids(checks.check_model()) == ["detection.E001"]
    with override_settings(DETECTION_MODEL=f"local-dir:{tmp_path}"):
        assert checks.check_model() == []


def test_it_requires_a_json_model_config_to_exist(tmp_path):
    config = tmp_path / "my-model.json"
    with override_settings(DETECTION_MODEL=str(config)):
        assert _ids(checks.check_model()) == ["detection.E001"]
    config.write_text("{}")
    with override_settings(DETECTION_MODEL=str(config)):
        assert checks.check_model() == []


# --- DETECTION_PRETRAINED -------------------------------------------------------------


@pytest.mark.parametrize("tag", ["laion2b_s34b_b88k", "LAION2B-S34B-B88K", "openai"])
def test_it_accepts_known_tags_the_way_open_clip_normalises_them(tag):
    with override_settings(DETECTION_MODEL="ViT-B-16", DETECTION_PRETRAINED=tag):
        assert checks.check_pretrained() == []


@override_settings(DETECTION_MODEL="ViT-B-16", DETECTION_PRETRAINED="laion5b_imaginary")
def test_it_flags_an_unknown_tag_and_lists_the_valid_ones():
    [message] = checks.check_pretrained()
    assert isinstance(message, Error)
    assert message.id == "detection.E003"
    assert "laion5b_imaginary" in message.msg
    assert "laion2b_s34b_b88k" in message.hint
    assert "openai" in message.hint


@pytest.mark.parametrize("name", ["weights.pt", "ckpt.safetensors", "model.bin", "sub/dir/x"])
def test_it_flags_a_checkpoint_path_that_does_not_exist(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with override_settings(DETECTION_PRETRAINED=name):
        assert _ids(checks.check_pretrained()) == ["detection.E002"]


def test_it_accepts_an_existing_checkpoint_file(tmp_path):
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    checkpoint.write_bytes(b"\0")
    with override_settings(DETECTION_PRETRAINED=str(checkpoint)):
        assert checks.check_pretrained() == []


@pytest.mark.parametrize("value", ["none", "None", "NONE"])
def test_it_warns_that_none_means_random_weights(value):
    with override_settings(DETECTION_PRETRAINED=value):
        [message] = checks.check_pretrained()
    assert isinstance(message, Warning)
    assert message.id == "detection.W001"
    assert "random weights" in message.msg
    assert "tests and benchmarks only" in message.hint


@override_settings(DETECTION_MODEL="ViT-B-61", DETECTION_PRETRAINED="laion2b_s34b_b88k")
def test_it_reports_an_unknown_model_once_not_again_as_a_bad_tag():
    assert checks.check_pretrained() == []
    assert _ids(checks.check_model()) == ["detection.E001"]


@pytest.mark.parametrize(
    "pretrained",
    ["openai", "LAION2B-S34B-B88K", "weights.ckpt", "weights.npz", "CHECKPOINT", "none"],
)
def test_it_validates_the_model_settings_the_way_the_loader_does(
    tiny_model, tmp_path, monkeypatch, pretrained
):
    """The check and the loader share one rule: what the check passes gets past the loader's
    validation, and what it refuses the loader refuses with the same words."""
    monkeypatch.chdir(tmp_path)
    if pretrained == "CHECKPOINT":
        pretrained = str(tiny_model.checkpoint)
    elif pretrained.endswith(".npz"):
        (tmp_path / pretrained).write_bytes(b"")  # exists: the loader gets as far as reading it
    spec = ModelSpec(str(tiny_model.config), pretrained, "cpu", "fp32")
    with override_settings(DETECTION_MODEL=spec.name, DETECTION_PRETRAINED=pretrained):
        errors = [m for m in checks.check_model() + checks.check_pretrained() if m.is_serious()]
    if errors:
        with pytest.raises(ModelLoadError) as refused:
            load_model(spec)
        assert errors[0].msg in str(refused.value)
    else:
        try:
            load_model(spec)
        except ModelLoadError as error:  # only the file's content may fail it, not the rule
            assert "could not load" in str(error), error


@pytest.mark.parametrize("tag", ["LAION2B-S34B-B88K", "Laion2b-S34b-B88k"])
def test_it_passes_a_tag_to_the_loader_in_open_clips_spelling(tag):
    with override_settings(DETECTION_MODEL="ViT-B-16", DETECTION_PRETRAINED=tag):
        assert checks.check_pretrained() == []
    assert modelspec.resolve_pretrained("ViT-B-16", tag) == "laion2b_s34b_b88k"


def test_it_reports_a_missing_relative_checkpoint_as_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with override_settings(DETECTION_MODEL="ViT-B-16", DETECTION_PRETRAINED="weights.ckpt"):
        assert _ids(checks.check_pretrained()) == ["detection.E002"]


# --- DETECTION_DEVICE -----------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_it_accepts_devices_that_always_exist(device):
    with override_settings(DETECTION_DEVICE=device):
        assert checks.check_device() == []


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_it_flags_cuda_on_a_machine_without_it(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with override_settings(DETECTION_DEVICE=device):
        [message] = checks.check_device()
    assert message.id == "detection.E004"
    assert "CUDA is not available" in message.msg


def test_it_flags_a_cuda_index_beyond_the_installed_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with override_settings(DETECTION_DEVICE="cuda:2"):
        assert _ids(checks.check_device()) == ["detection.E005"]
    with override_settings(DETECTION_DEVICE="cuda:1"):
        assert checks.check_device() == []


# --- DETECTION_VIDEO_DIRS -------------------------------------------------------------


def test_it_warns_about_each_missing_video_directory(tmp_path):
    present = tmp_path / "present"
    present.mkdir()
    missing = [tmp_path / "gone", tmp_path / "also-gone"]
    with override_settings(MEDIA_ROOT=tmp_path / "media", DETECTION_VIDEO_DIRS=[present, *missing]):
        messages = checks.check_video_dirs()
    assert _ids(messages) == ["detection.W002", "detection.W002"]
    assert [str(path) in m.msg for m, path in zip(messages, missing, strict=True)] == [True, True]


def test_it_does_not_warn_about_a_media_root_that_uploads_will_create(tmp_path):
    media: Path = tmp_path / "media"
    with override_settings(MEDIA_ROOT=media, DETECTION_VIDEO_DIRS=[media]):
        assert checks.check_video_dirs() == []


def test_it_names_each_allowed_video_directory_once(tmp_path):
    from django.core.exceptions import ValidationError

    from cameras import validators

    media = tmp_path / "media"
    media.mkdir()
    # The default: MEDIA_ROOT is the one entry, and allowed anyway.
    with override_settings(MEDIA_ROOT=media, DETECTION_VIDEO_DIRS=[media]):
        assert validators.allowed_video_dirs() == [media.resolve()]
        with pytest.raises(ValidationError) as raised:
            validators.video_path(str(tmp_path / "elsewhere.mp4"))
    assert raised.value.messages[0].count(str(media.resolve())) == 1


def test_it_migrates_the_channel_layer_quietly_when_nothing_is_to_do(tmp_path, subprocess_env):
    env = {**subprocess_env, "CHANNELS_LAYER": "sqlite", "CHANNELS_DB_PATH": str(tmp_path / "c.db")}
    env.pop("REDIS_URL", None)
    first = manage("migrate_channels", env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "Applying" in first.stdout
    again = manage("migrate_channels", env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "channel layer: database up to date"
    assert "W001" not in again.stderr  # `migrate` has said the warnings already


# --- channel layer --------------------------------------------------------------------


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
def test_it_warns_about_the_in_memory_channel_layer():
    assert _ids(checks.check_channel_layer()) == ["detection.W003"]


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "channels_lite.layers.core.SQLiteChannelLayer"}}
)
def test_it_accepts_a_cross_process_channel_layer():
    assert checks.check_channel_layer() == []
