"""What each model preset costs on this machine: `python -m bench.models`.

For each preset (detection/engine/modelspec.py, PRESETS) the image encoder alone, random
weights (the same compute as trained ones: nothing is downloaded), built through the
engine's own loader (so MobileCLIP's towers are reparameterised as when monitoring):

- images/s on the CPU in fp32 and in bf16 at one batch size (32 by default), best of N
  timed rounds after a warm-up, the two precisions timed in turns so a burst of load from
  another process slows both alike; torch uses as many threads as the process has cores;
- what `auto` precision picks for it here (the engine's own probe, device.probe_cpu_precision,
  at its small batch) and whether that agrees with the large-batch timing;
- GFLOP per image (FlopCounterMode, one encode_image) and parameter counts;
- on CUDA, when there is one, fp16 and bf16 images/s at a larger batch (256).

The load average is read before and after each model: on a shared machine it says how far
to trust a row. Output: a markdown table on stdout, the full record as JSON with `--json`.

    python -m bench.models [--presets vit-b-16,mobileclip2-s0] [--batch-size 32]
                           [--repeats 3] [--cuda-batch-size 256] [--json out.json]

ViT-L-14 is the GPU preset: on a CPU it is timed only when named in --presets (its fp32
batch of 32 takes about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detection.engine import ModelSpec, load_model
from detection.engine import device as engine_device
from detection.engine import loader as engine_loader
from detection.engine.cpu_kernels import pack_image_tower
from detection.engine.loader import LoadedModel
from detection.engine.modelspec import PRESETS, Preset

GPU_ONLY = ("vit-l-14",)  # left out of a CPU run unless asked for by name


def loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def images_per_s(
    models: dict[str, LoadedModel], batch_size: int, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Images/s of each model's image encoder, timed in turns: best of `repeats` rounds."""
    first = next(iter(models.values()))
    h, w = first.preprocess.size
    pixels = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    inputs = {name: pixels.to(m.device, m.dtype) for name, m in models.items()}
    best = dict.fromkeys(models, math.inf)
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, loaded in models.items():
                _sync(loaded.device)
                start = time.perf_counter()
                loaded.model.encode_image(inputs[name])
                _sync(loaded.device)
                if round_ >= warmup:
                    best[name] = min(best[name], time.perf_counter() - start)
    return {name: batch_size / seconds for name, seconds in best.items()}


def as_precision(loaded: LoadedModel, precision: str) -> LoadedModel:
    """A copy of `loaded` cast to `precision` (the engine casts the whole model the same way,
    and packs a bf16 ViT tower on the CPU as it does: detection.engine.cpu_kernels)."""
    dtype = engine_device.DTYPES[precision]
    model = copy.deepcopy(loaded.model).to(dtype)
    packed = pack_image_tower(model.visual, loaded.preprocess.size)
    return dataclasses.replace(
        loaded, model=model, precision=precision, dtype=dtype, packed_kernels=packed
    )


def parameters_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def measure_preset(
    preset: Preset,
    *,
    batch_size: int,
    repeats: int,
    cuda_batch_size: int,
    cpu: bool = True,
    log=lambda message: None,
) -> dict[str, Any]:
    from bench.benchmark import model_gflops

    row: dict[str, Any] = {
        "preset": preset.key,
        "model": preset.model,
        "pretrained": preset.pretrained,
        "imagenet_top1": preset.imagenet_top1,
        "source": preset.source,
        "load_average_start": loadavg(),
    }
    if cpu:
        log(f"{preset.key}: building on the CPU")
        fp32 = load_model(ModelSpec(preset.key, "none", "cpu", "fp32"))
        row["image_size"] = list(fp32.preprocess.size)
        row["image_params_m"] = round(parameters_m(fp32.model.visual), 2)
        row["total_params_m"] = round(parameters_m(fp32.model), 2)
        row["gflops_per_image"] = round(model_gflops(fp32), 2)
        # What `auto` picks here: the engine's own probe, on the fp32 tower.
        engine_device.forget_probes()
        probe = engine_device.probe_cpu_precision(
            preset.model, fp32.model.visual, fp32.preprocess.size
        )
        row["auto"] = dataclasses.asdict(probe)
        log(f"{preset.key}: timing fp32 and bf16 at batch {batch_size}")
        if engine_device.cpu_isa() == "none":
            rates = images_per_s({"fp32": fp32}, batch_size, repeats)
        else:
            bf16 = as_precision(fp32, "bf16")
            rates = images_per_s({"fp32": fp32, "bf16": bf16}, batch_size, repeats)
            del bf16
        row["cpu"] = {
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            **{f"{name}_images_per_s": round(rate, 2) for name, rate in rates.items()},
        }
        faster = max(rates, key=rates.__getitem__)
        row["auto"]["agrees_with_batch_timing"] = probe.precision == faster or (
            probe.precision == "fp32"
            and rates.get("bf16", 0) < rates["fp32"] * engine_device.BF16_MARGIN
        )
        row["cpu"]["auto_images_per_s"] = round(rates[probe.precision], 2)
        del fp32
        engine_loader.clear_cache()  # one preset's models in memory at a time
    if torch.cuda.is_available():
        log(f"{preset.key}: timing fp16 and bf16 on CUDA at batch {cuda_batch_size}")
        fp16 = load_model(ModelSpec(preset.key, "none", "cuda", "fp16"))
        row.setdefault("gflops_per_image", round(model_gflops(fp16), 2))
        row.setdefault("image_params_m", round(parameters_m(fp16.model.visual), 2))
        bf16 = as_precision(fp16, "bf16")
        rates = images_per_s({"fp16": fp16, "bf16": bf16}, cuda_batch_size, repeats, warmup=2)
        row["cuda"] = {
            "device": torch.cuda.get_device_name(0),
            "batch_size": cuda_batch_size,
            **{f"{name}_images_per_s": round(rate, 1) for name, rate in rates.items()},
        }
        del fp16, bf16
        engine_loader.clear_cache()
        torch.cuda.empty_cache()
    row["load_average_end"] = loadavg()
    return row


def run(
    keys: Sequence[str],
    *,
    batch_size: int = 32,
    repeats: int = 3,
    cuda_batch_size: int = 256,
    cpu: bool = True,
    log=lambda message: None,
) -> dict[str, Any]:
    from bench.benchmark import machine_info

    torch.set_num_threads(cores())
    rows = [
        measure_preset(
            PRESETS[key],
            batch_size=batch_size,
            repeats=repeats,
            cuda_batch_size=cuda_batch_size,
            cpu=cpu,
            log=log,
        )
        for key in keys
    ]
    return {"machine": machine_info(), "presets": rows}


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, bf16 ISA {m['isa']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), open_clip {m['open_clip']}"
        + (f", GPU {m['cuda']}" if m.get("cuda") else ""),
        "",
        "| Preset | open_clip model, weights | ImageNet top-1 (published) | GFLOP/image "
        "| Image params (M) | CPU fp32 img/s | CPU bf16 img/s "
        "| auto picks (probe batch: fp32/bf16 ms) | CUDA fp16 img/s | Load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["presets"]:
        cpu, cuda, auto = r.get("cpu") or {}, r.get("cuda") or {}, r.get("auto") or {}
        picks = "-"
        if auto:
            picks = auto["precision"]
            if auto.get("fp32_s") is not None:
                picks += (
                    f" ({auto['batch']}: {auto['fp32_s'] * 1e3:.0f}/{auto['bf16_s'] * 1e3:.0f})"
                )
            if not auto.get("agrees_with_batch_timing", True):
                picks += " *"
        lines.append(
            f"| `{r['preset']}` | {r['model']} `{r['pretrained']}` | {r['imagenet_top1']:g} % | "
            f"{_f(r.get('gflops_per_image'), 2)} | {_f(r.get('image_params_m'))} | "
            f"{_f(cpu.get('fp32_images_per_s'))} | {_f(cpu.get('bf16_images_per_s'))} | "
            f"{picks} | {_f(cuda.get('fp16_images_per_s'), 0)} | "
            f"{_f(r['load_average_start'], 2)}-{_f(r['load_average_end'], 2)} |"
        )
    rows = report["presets"]
    if any(not (r.get("auto") or {}).get("agrees_with_batch_timing", True) for r in rows):
        lines += ["", "\\* the probe's small batch disagreed with the batch timing here."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.models",
        description="Images/s of each model preset's image encoder (random weights), fp32 and "
        "bf16 on the CPU, fp16 on CUDA when present: a markdown table, JSON with --json.",
    )
    parser.add_argument(
        "--presets",
        help=f"comma-separated, of {', '.join(PRESETS)} (default: all; on a CPU all but "
        f"{', '.join(GPU_ONLY)})",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds, best kept")
    parser.add_argument("--cuda-batch-size", type=int, default=256)
    parser.add_argument("--no-cpu", action="store_true", help="time only on CUDA")
    parser.add_argument("--json", metavar="FILE", help="also write the JSON record here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.presets:
        keys = [k.strip().lower() for k in args.presets.split(",") if k.strip()]
        unknown = [k for k in keys if k not in PRESETS]
        if unknown:
            parser.error(f"unknown preset(s) {', '.join(unknown)}: expected {', '.join(PRESETS)}")
    else:
        keys = [k for k in PRESETS if torch.cuda.is_available() or k not in GPU_ONLY]
    report = run(
        keys,
        batch_size=args.batch_size,
        repeats=args.repeats,
        cuda_batch_size=args.cuda_batch_size,
        cpu=not args.no_cpu,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
