"""The GPU path of the benchmark (bench/gpu.py, scripts/gpu_bench.sh), dry-run on the CPU
with the tiny model: the resize moved onto the device scores what the CPU resize scores, and
torchcodec (NVDEC on a GPU, its CPU decoder here) scores what OpenCV's frames score."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from bench import benchmark, gpu
from detection.engine import ModelSpec, load_model
from detection.engine.area_resize import fit_batch
from detection.engine.preprocess import normalize
from detection.engine.scoring import encode_images


def _chunks(video, loaded, fit_on_device: bool) -> torch.Tensor:
    dataset = gpu.DecodedChunks(video, 10.0, loaded.preprocess, 8, 1, fit_on_device)
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
    report = gpu.throughput_benchmark(
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


def _torchcodec_or_skip() -> None:
    try:
        gpu.torchcodec_decoder()
    except gpu.TorchcodecUnavailable as exc:
        if os.environ.get("TEST_TORCHCODEC"):  # CI (.ci/run) installs what it needs
            pytest.fail(f"TEST_TORCHCODEC is set but {exc}")
        pytest.skip(str(exc))


def test_it_scores_with_torchcodec_the_frames_opencv_scores(tiny_model, make_video):
    _torchcodec_or_skip()
    video = make_video("gpu.avi", frames=21, fps=10.0, size=(320, 240), black=(7,))
    loaded = load_model(
        ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32")
    )
    runs = {
        feed: gpu.pipeline_run(
            loaded,
            video,
            10.0,
            decoders=2,
            batch_size=8,
            loops=1,
            feed=feed,
            fit_on_device=True,
            ring_chunk=5,
            keep_scores=True,
        )
        for feed in ("dataloader", "torchcodec")
    }
    opencv, torchcodec = runs["dataloader"], runs["torchcodec"]
    # The same frames (the black one skipped by both), decoded on the CPU without a GPU.
    assert torchcodec["frames"] == opencv["frames"] == 40
    assert "No fallback required" in torchcodec["torchcodec_status"]
    assert [r[:2] for r in torchcodec["scores"]] == [r[:2] for r in opencv["scores"]]
    # Two decoders of one codec may round colours apart by a grey level: scores stay close.
    diff = np.abs(np.array(torchcodec["scores"])[:, 2] - np.array(opencv["scores"])[:, 2])
    assert diff.max() < 1e-3


def test_it_says_in_one_line_what_the_torchcodec_feed_needs_when_it_is_missing(
    tiny_model, make_video, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # `import torchcodec` fails
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    video = make_video("gpu.avi", frames=4, fps=10.0)
    with pytest.raises(SystemExit) as exit_info:
        # `python -m bench.benchmark`, as scripts/gpu_bench.sh runs it (bench/gpu.py's main)
        argv = [str(video), "--feeds", "ring,torchcodec", "--model", str(tiny_model.config)]
        benchmark.main(argv)
    message = str(exit_info.value.code)
    assert "\n" not in message
    assert "--feeds torchcodec" in message and "pip install '.[gpu]'" in message
    loaded = load_model(
        ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32")
    )
    with pytest.raises(gpu.TorchcodecUnavailable, match=r"^the torchcodec feed needs"):
        gpu.pipeline_run(loaded, video, 10.0, decoders=1, batch_size=4, loops=1, feed="torchcodec")


def test_it_compares_the_feeds_in_one_report_and_table(tiny_model, make_video):
    video = make_video("gpu.avi", frames=10, fps=10.0)
    feeds = ["dataloader", "ring"]
    try:
        gpu.torchcodec_decoder()
        feeds.append("torchcodec")
    except gpu.TorchcodecUnavailable:
        pass
    report = gpu.throughput_benchmark(
        video,
        spec=ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint), "cpu", "fp32"),
        decoders=(1,),
        batch_sizes=(),
        batch_size=8,
        loops=1,
        matmul_sizes=(64,),
        fit_on_device=True,
        feeds=feeds,
    )
    keys = ["pipeline_ring", "decode_only_ring", "pipeline_ring_fit_on_device"]
    keys += ["pipeline_torchcodec"] if "torchcodec" in feeds else []
    for key in keys:
        (run,) = report[key]
        assert "error" not in run, run
        assert run["frames"] == 10 and run["fps"] > 0
    assert report["pipeline_ring_fit_on_device"][0]["fit_on_device"] is True
    table = gpu.format_throughput(report).splitlines()
    assert table[0].startswith(f"{video}: 320x240, 10 frames")
    assert table[1].split()[:3] == ["feed", "resize", "on"]
    rows = [line.split()[:3] for line in table[2:]]
    assert ["ring", "decoders", "1"] in rows and ["ring", "device", "1"] in rows
    assert ["dataloader", "device", "1"] in rows
