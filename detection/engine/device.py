"""Choosing a device and a numeric precision.

`auto` precision casts the whole model (not autocast, which was slower on the development
CPU; docs/performance.md) to fp16 on CUDA, and to bf16 on a CPU that both advertises bf16 support
and really runs a bf16 matmul faster than fp32 (a quick probe, once per process). Everything
else runs in fp32.

`resolve_device` also tunes glibc's allocator once per process (`keep_freed_memory`): see
there why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import re
import sys
import time

import torch

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    tuned = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BYTES)
    )
    log.debug("glibc allocator keeps freed memory: %s", tuned)
    return tuned


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
