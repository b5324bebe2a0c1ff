# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""The weights dtype: `dtype="auto"` picks bf16 where the device runs it natively and fp32 elsewhere.

Why this matters on CPUs (measured with torch 2.13, 2 threads, square matmuls):

* AMX (Intel Sapphire Rapids and later): bf16 ~1.7–2.4 TFLOP/s on LLM-sized shapes, ~5–8× fp32;
* AVX512-BF16 without AMX (AMD EPYC Zen 4): bf16 ~420 GFLOP/s, ~2× fp32 (~190 GFLOP/s);
* AVX2 only (older AMD EPYC): bf16 ~1 GFLOP/s on a 512² matmul, 116× *slower* than fp32 (~150 GFLOP/s) — oneDNN
  has no bf16 kernel there.

Medians from `benchmarks/matmul_peak.py`, one section per CPU kind in `benchmarks/results/matmul_peak.md`.

`torch.backends.cpu.get_cpu_capability()` reports only the vector ISA ("AVX2", "AVX512"), which does not tell
AVX512-BF16 or AMX apart from plain AVX512, so the decision reads the CPU features torch itself detects
(`torch.cpu._is_amx_tile_supported()`, `torch.cpu._is_avx512_bf16_supported()`, from cpuinfo); where a torch build
lacks those functions, a short measured probe (bf16 vs fp32 128² matmuls, ~0.1 s) decides. CUDA devices use bf16 when
`torch.cuda.is_bf16_supported()`.
"""

import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DevicePrecision:
    """What `dtype="auto"` found on a device: the CPU kind (or device type), whether bf16 is native, and why."""

    device: str
    kind: str
    """`AMX`, `AVX512-BF16`, `AVX512`, `AVX2`, `DEFAULT` (CPU vector ISA) or the device type (`cuda`, ...)."""
    native_bf16: bool
    reason: str

    @property
    def auto_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.native_bf16 else torch.float32


def _cpu_feature(name: str) -> bool | None:
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if callable(probe) else None


def matmul_gflops(dtype: torch.dtype, size: int = 128, seconds: float = 0.05) -> float:
    """GFLOP/s of a `size`² matmul in `dtype` on the CPU: the best of repeated calls over about `seconds`."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up: oneDNN builds its kernel on the first call
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() >= deadline:
            return 2 * size**3 / best / 1e9


def device_precision(device: str | torch.device = "cpu") -> DevicePrecision:
    """Inspect `device` (default: the CPU) for native bf16 support; see the module docstring for the rule."""
    device = torch.device(device)
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return DevicePrecision(str(device), "cuda", native, f"torch.cuda.is_bf16_supported() is {native}")
    if device.type != "cpu":
        return DevicePrecision(str(device), device.type, False, f"no bf16 rule for {device.type} devices")
    capability = torch.backends.cpu.get_cpu_capability()
    amx, avx512_bf16 = _cpu_feature("_is_amx_tile_supported"), _cpu_feature("_is_avx512_bf16_supported")
    if amx:
        return DevicePrecision("cpu", "AMX", True, f"the CPU has AMX tiles (capability {capability})")
    if avx512_bf16:
        return DevicePrecision(
            "cpu", "AVX512-BF16", True, f"the CPU has AVX512-BF16 instructions (capability {capability})"
        )
    if amx is None or avx512_bf16 is None:  # this torch build cannot say: measure
        ratio = matmul_gflops(torch.bfloat16) / matmul_gflops(torch.float32)
        return DevicePrecision(
            "cpu", capability, ratio > 1.0,
            f"torch does not report the CPU's bf16 features; a measured bf16 matmul ran {ratio:.2g}x fp32's speed",
        )  # fmt: skip
    return DevicePrecision(
        "cpu", capability, False, f"the CPU has neither AMX nor AVX512-BF16 (capability {capability})"
    )


def resolve_dtype(
    dtype: str | torch.dtype | None = "auto", device: str | torch.device = "cpu"
) -> torch.dtype:
    """
    The weights dtype to use on `device`.

    `"auto"` (or `None`) gives bf16 where `device` runs it natively and fp32 elsewhere, and logs the choice and why.
    An explicit dtype (`"float32"`, `"bfloat16"`, `"float16"` or a `torch.dtype`) is always returned as given; an
    explicit bf16 on a CPU without native bf16 logs a warning with the slowdown measured on the spot.
    """
    if dtype is None or dtype == "auto":
        found = device_precision(device)
        chosen = found.auto_dtype
        logger.info("dtype auto -> %s: %s", str(chosen).removeprefix("torch."), found.reason)
        return chosen
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPE_NAMES}")
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype or one of {DTYPE_NAMES}, got {dtype!r}")
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu":
        found = device_precision(device)
        if not found.native_bf16:
            slowdown = matmul_gflops(torch.float32) / matmul_gflops(torch.bfloat16)
            logger.warning(
                "bfloat16 was asked for, but %s: a bf16 matmul runs %.0fx slower than fp32 on this machine "
                "(measured just now); use dtype='auto' or 'float32'",
                found.reason,
                slowdown,
            )
    return dtype


__all__ = ["DTYPE_NAMES", "DevicePrecision", "device_precision", "matmul_gflops", "resolve_dtype"]
