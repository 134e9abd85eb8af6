"""The GPU path of the benchmark (bench/benchmark.py, scripts/gpu_bench.sh), dry-run on the CPU
with the tiny model: the resize moved onto the device scores what the CPU resize scores."""

from __future__ import annotations

import torch

from bench import benchmark as bench
from detection.engine import ModelSpec, load_model
from detection.engine.area_resize import fit_batch
from detection.engine.preprocess import normalize
from detection.engine.scoring import encode_images


def _chunks(video, loaded, fit_on_device: bool) -> torch.Tensor:
    dataset = bench.DecodedChunks(video, 10.0, loaded.preprocess, 8, 1, fit_on_device)
    return torch.cat(list(dataset))


def test_it_encodes_frames_fitted_on_the_device_like_frames_fitted_by_opencv(
    tiny_model, make_video
):
    video = make_video("gpu.avi", frames=12, fps=10.0, size=(320, 240))
    loaded = load_model(
        ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32")
    )
    on_cpu = _chunks(video, loaded, fit_on_device=False)
    cropped = _chunks(video, loaded, fit_on_device=True)
    assert len(on_cpu) == len(cropped) == 12
    # The decoders only crop: full-height frames of the clip, not the model's input size.
    assert cropped.shape[1] == 240 and on_cpu.shape[1:3] == loaded.preprocess.size
    fitted = fit_batch(cropped, loaded.preprocess)
    assert (fitted.round() - on_cpu.float()).abs().max() <= 1
    a = encode_images(loaded, normalize(on_cpu, loaded))
    b = encode_images(loaded, normalize(fitted, loaded))
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999


def test_it_reports_the_pipeline_with_the_resize_on_the_device(tiny_model, make_video):
    video = make_video("gpu.avi", frames=20, fps=10.0)
    report = bench.throughput_benchmark(
        video,
        spec=ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"),
        decoders=(1,),
        batch_sizes=(8,),
        batch_size=8,
        loops=1,
        matmul_sizes=(64,),
        fit_on_device=True,
    )
    for key in ("pipeline", "pipeline_fit_on_device", "decode_only_fit_on_device"):
        (run,) = report[key]
        assert "error" not in run, run
        assert run["frames"] == 20 and run["fps"] > 0
    assert report["pipeline_fit_on_device"][0]["fit_on_device"] is True
