"""Choosing a device and a numeric precision.

`auto` precision casts the whole model (not autocast, which was slower on the development
CPU; see DESIGN.md) to fp16 on CUDA, and to bf16 on a CPU that both advertises bf16 support
and really runs a bf16 matmul faster than fp32 (a quick probe, once per process). Everything
else runs in fp32.
"""

from __future__ import annotations

import functools
import logging
import re
import time

import torch

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> str:
    """Map `auto|cpu|cuda|cuda:N` to a concrete torch device string."""
    device = (device or "auto").strip().lower()
    if not DEVICE_RE.match(device):
        raise ModelLoadError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N")
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


def resolve_precision(precision: str, device: str) -> str:
    """Map `auto|fp32|bf16|fp16` to a concrete precision for `device`."""
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
    return "bf16" if cpu_bf16_is_faster() else "fp32"
