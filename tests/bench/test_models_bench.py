"""`python -m bench.models` (bench/models.py) on the tiny model dressed as a preset.

Only that every field is there and sane and the table lists the row: timings are the
benchmark's job, not the tests'.
"""

from __future__ import annotations

import pytest

from bench import models as bench_models
from detection.engine import device as engine_device
from detection.engine.modelspec import Preset


@pytest.fixture
def tiny_preset(tiny_model):
    yield Preset(
        key=str(tiny_model.config),
        model="tiny-clip",
        pretrained="none",
        imagenet_top1=1.0,
        source="tests/support/model.py",
    )
    engine_device.forget_probes()


def test_it_times_a_preset_in_both_precisions_and_says_what_auto_picks(tiny_preset):
    row = bench_models.measure_preset(tiny_preset, batch_size=2, repeats=1, cuda_batch_size=2)

    assert row["image_size"] == [224, 224] and row["gflops_per_image"] > 0
    assert 0 < row["image_params_m"] < row["total_params_m"]
    assert row["cpu"]["fp32_images_per_s"] > 0 and row["cpu"]["batch_size"] == 2
    if engine_device.cpu_isa() != "none":
        assert row["cpu"]["bf16_images_per_s"] > 0
    assert row["auto"]["precision"] in ("fp32", "bf16")
    assert row["cpu"]["auto_images_per_s"] == row["cpu"][f"{row['auto']['precision']}_images_per_s"]

    table = bench_models.markdown({"machine": machine(), "presets": [row]})
    assert f"| `{tiny_preset.key}` | tiny-clip `none` | 1 % |" in table


def test_it_refuses_an_unknown_preset_by_name(capsys):
    with pytest.raises(SystemExit):
        bench_models.main(["--presets", "vit-b-99"])
    assert "unknown preset(s) vit-b-99" in capsys.readouterr().err


def machine() -> dict:
    return {
        "cpu": "test", "cores": 2, "isa": "none", "torch": "x", "torch_threads": 2,
        "open_clip": "y", "cuda": None,
    }  # fmt: skip
