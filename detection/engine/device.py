"""Choosing a device and a numeric precision.

`auto` precision casts the whole model (not autocast, which was slower on the development
CPU; docs/performance.md) to fp16 on CUDA. On a CPU it is decided per model: where the
processor advertises bf16 support and really runs a bf16 matmul faster than fp32 (a quick
probe, once per process), the loaded image encoder itself is timed in fp32 and in bf16 on a
batch sized to the model (`probe_cpu_precision`, about a second, once per model and
process), and bf16 is kept when it is at least 5 % faster. A matmul alone is not enough: a
convolutional tower gains much less from bf16 than a ViT does (MobileCLIP2 on the
development CPU: 1.2-1.5x at small batches against ViT-B-16's 4x), and on another CPU it
may lose. Everything else runs in fp32 (docs/models.md).

`resolve_device` also tunes glibc's allocator once per process (`keep_freed_memory`): see
there why.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What `resolve_precision` answers for `auto` on a bf16-capable CPU before the model's own
# probe has run: load in fp32, then call `probe_cpu_precision`.
MEASURE = "auto"


def resolve_device(device: str) -> str:
    """Map `auto|cpu|cuda|cuda:N` to a concrete torch device string.

    Also tunes the host allocator, once per process (`keep_freed_memory`).
    """
    device = (device or "auto").strip().lower()
    if not DEVICE_RE.match(device):
        raise ModelLoadError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N")
    # Host memory: decoded frames and CPU inference alike (see `keep_freed_memory`).
    keep_freed_memory()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available here")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return device


def _glibc(name: str) -> Any:
    """A function of the C library where it is glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves big blocks (from 128 KiB up to a self-adjusting threshold) with
    mmap and returns freed heap tops at once, so each forward pass on the CPU faults its
    activations back in page by page, and so does every decoded frame (1.3 MB at 768x576).
    Measured on the development machine (ViT-B-16, bf16, batch 16): ~10,000 minor page
    faults per image and 15-30 % of the encoder's time; with both thresholds at 1 GiB,
    none, and the same peak RSS (the activations are needed on every batch anyway). Forked
    decoder processes inherit the setting. Once per process; a no-op where the C library
    is not glibc. Returns whether the allocator was tuned.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    tuned = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )
    log.debug("glibc allocator keeps freed memory: %s", tuned)
    return tuned


def release_freed_memory() -> bool:
    """Hand the memory freed so far back to the kernel (glibc's `malloc_trim`).

    `keep_freed_memory` keeps up to 1 GiB of freed memory for reuse, which is right for
    activations but also kept what loading freed: the fp32 weights after the cast to bf16
    and the precision probe's copy (ViT-B-32: a worker's RSS 1,749 MiB after loading,
    1,113 MiB once trimmed). Called once a model is loaded. A no-op off glibc.
    """
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))


@functools.cache
def cpu_isa() -> str:
    """The CPU's best bf16 matrix instruction set: 'amx', 'avx512_bf16' or 'none'."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = set(f.read().split())
    except OSError:
        flags = set()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "none"


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Probe once: does a bf16 matmul beat fp32 on this CPU by a clear margin?"""
    if cpu_isa() == "none":
        return False

    def best_of(dtype: torch.dtype) -> float:
        a = torch.randn(512, 512).to(dtype)
        b = torch.randn(512, 512).to(dtype)
        a @ b  # warm-up: first call pays for kernel selection
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return best

    fp32, bf16 = best_of(torch.float32), best_of(torch.bfloat16)
    # Emulated bf16 is several times slower than fp32; native bf16 several times faster.
    # 1.5x keeps us on fp32 where the gain would be noise.
    faster = bf16 * 1.5 < fp32
    log.info(
        "bf16 probe: fp32 %.2f ms, bf16 %.2f ms -> %s",
        fp32 * 1e3,
        bf16 * 1e3,
        "bf16" if faster else "fp32",
    )
    return faster


# --- auto on a CPU: time the model's own image encoder ---------------------------------------

# The probe's batch: as many images as one fp32 call does in about PROBE_CALL_S (sized
# from one image), at most PROBE_MAX_BATCH. A light model then shows its large-batch
# behaviour (MobileCLIP2-S0's bf16 gain grows with the batch), a heavy one keeps the probe
# short (ViT-B-16 on 2 cores: one image).
PROBE_CALL_S = 0.2
PROBE_MAX_BATCH = 16
PROBE_BUDGET_S = 1.2  # both precisions together, warm-up included
PROBE_MIN_ROUNDS = 2  # timed rounds however slow (one alone was too often a noisy one)
PROBE_MAX_ROUNDS = 5
# bf16 rounds activations to 8 significant bits: take it only for a gain beyond the noise.
# Not more: a small batch understates bf16's gain (MobileCLIP2-S2 on the development CPU:
# 1.4x at batch 1-2, 2x at 8-16), and a wrong fp32 costs more than a wrong bf16.
BF16_MARGIN = 1.05
CLOSE_CALL = 1.25  # timings nearer than this get a second look

Timer = Callable[[list[tuple[torch.nn.Module, torch.Tensor]], float], list[float]]


@dataclass(frozen=True)
class PrecisionProbe:
    """What `probe_cpu_precision` chose for a model and why (best seconds per batch)."""

    model: str
    precision: str
    fp32_s: float | None = None
    bf16_s: float | None = None
    batch: int = 0
    reason: str = ""


_probes: dict[str, PrecisionProbe] = {}
_probes_lock = threading.Lock()


def time_encoders(runs: list[tuple[torch.nn.Module, torch.Tensor]], budget_s: float) -> list[float]:
    """Best seconds of `encoder(pixels)` for each run, timed in turns.

    One warm-up call each (oneDNN picks and caches its kernels on the first), then rounds
    of one call each, in turn, so a burst of load from another process slows every
    candidate alike rather than the one that happened to be running; as many rounds as fit
    in `budget_s` (warm-up included), at least PROBE_MIN_ROUNDS, at most PROBE_MAX_ROUNDS.
    """
    best = [math.inf] * len(runs)
    spent = 0.0
    with torch.inference_mode():
        for round_ in range(PROBE_MAX_ROUNDS + 1):
            started = time.perf_counter()
            for i, (encoder, pixels) in enumerate(runs):
                start = time.perf_counter()
                encoder(pixels)
                if round_:
                    best[i] = min(best[i], time.perf_counter() - start)
            took = time.perf_counter() - started
            spent += took
            if round_ >= PROBE_MIN_ROUNDS and spent + took > budget_s:
                break
    return best


def probe_cpu_precision(
    model_name: str,
    encoder: torch.nn.Module,
    image_size: tuple[int, int],
    *,
    timer: Timer | None = None,
) -> PrecisionProbe:
    """`auto` on a CPU for this model: fp32 or bf16, whichever runs `encoder` faster.

    `encoder` is the loaded fp32 image tower; it is timed as it is, and a bf16 copy of it
    (the model itself is not cast back and forth: a round trip through bf16 would round its
    weights). Without native bf16 (`cpu_bf16_is_faster`, the matmul pre-filter) nothing is
    timed: emulated bf16 is always slower. The choice is cached per model name for the
    process and logged with both timings. `timer` replaces `time_encoders` (tests).
    """
    # Held while timing: two probes at once (two models loading in two threads) would slow
    # each other down and measure the contention, not the models.
    with _probes_lock:
        if model_name in _probes:
            return _probes[model_name]
        if not cpu_bf16_is_faster():
            probe = PrecisionProbe(model_name, "fp32", reason="no native bf16 on this CPU")
        else:
            probe = _measure(model_name, encoder, image_size, timer or time_encoders)
        _probes[model_name] = probe
    if probe.fp32_s is not None and probe.bf16_s is not None:
        log.info(
            "auto precision for %s on this CPU: image encoder fp32 %.1f ms, bf16 %.1f ms per "
            "batch of %d -> %s",
            model_name,
            probe.fp32_s * 1e3,
            probe.bf16_s * 1e3,
            probe.batch,
            probe.precision,
        )
    else:
        log.info(
            "auto precision for %s on this CPU: %s (%s)", model_name, probe.precision, probe.reason
        )
    return probe


def _measure(
    model_name: str, encoder: torch.nn.Module, image_size: tuple[int, int], timer: Timer
) -> PrecisionProbe:
    height, width = image_size
    seeded = torch.Generator().manual_seed(0)
    pixels = torch.randn(PROBE_MAX_BATCH, 3, height, width, generator=seeded)
    batch = probe_batch(encoder, pixels[:1])
    half = copy.deepcopy(encoder).to(torch.bfloat16)
    try:
        runs = [(encoder, pixels[:batch]), (half, pixels[:batch].to(torch.bfloat16))]
        fp32_s, bf16_s = timer(runs, PROBE_BUDGET_S)
        if 1 / CLOSE_CALL < fp32_s / bf16_s < CLOSE_CALL:
            # A close call is where a burst of load elsewhere decides: time it once more.
            again = timer(runs, PROBE_BUDGET_S)
            fp32_s, bf16_s = min(fp32_s, again[0]), min(bf16_s, again[1])
    finally:
        del half
    faster = bf16_s * BF16_MARGIN < fp32_s
    return PrecisionProbe(
        model_name,
        "bf16" if faster else "fp32",
        fp32_s,
        bf16_s,
        batch,
        "bf16 measured faster" if faster else f"bf16 not {BF16_MARGIN:g}x faster",
    )


def probe_batch(encoder: torch.nn.Module, one: torch.Tensor) -> int:
    """How many images one fp32 call of `encoder` takes about PROBE_CALL_S for (1 to
    PROBE_MAX_BATCH), from a warm-up call and the better of two timed calls on one image."""
    per_image = math.inf
    with torch.inference_mode():
        encoder(one)
        for _ in range(2):
            start = time.perf_counter()
            encoder(one)
            per_image = min(per_image, time.perf_counter() - start)
    return max(1, min(PROBE_MAX_BATCH, int(PROBE_CALL_S / max(per_image, 1e-6))))


def measured_cpu_precision(model_name: str) -> str | None:
    """The precision `probe_cpu_precision` chose for `model_name` in this process, if it ran."""
    with _probes_lock:
        probe = _probes.get(model_name)
    return probe.precision if probe else None


def forget_probes() -> None:
    """Drop the cached choices (tests; a process that changed its thread count)."""
    with _probes_lock:
        _probes.clear()


def resolve_precision(precision: str, device: str, model_name: str | None = None) -> str:
    """Map `auto|fp32|bf16|fp16` to a concrete precision for `device`.

    `auto` on a CPU with native bf16 depends on the model: the choice measured for
    `model_name` when `probe_cpu_precision` has run for it, else MEASURE ("auto"): load the
    model in fp32 and let the probe decide.
    """
    precision = (precision or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise ModelLoadError(
            f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    if precision != "auto":
        if precision == "fp16" and device == "cpu":
            log.warning("fp16 on CPU is emulated and slow; bf16 or fp32 are better choices")
        return precision
    if device.startswith("cuda"):
        return "fp16"
    if not cpu_bf16_is_faster():
        return "fp32"
    return (measured_cpu_precision(model_name) if model_name else None) or MEASURE
