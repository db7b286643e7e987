"""What the machine can do fast: the device to use and the precision to train in.

bf16 autocast is 1.6-2.2x faster than fp32 on CPUs with native bf16 (AVX-512 BF16 or
AMX) but 20-30x *slower* on CPUs without it, where PyTorch emulates it (measured on this
project's 2-core AMD EPYC machines: 162 vs 4,389 tokens/s; see docs/BENCHMARKS.md).
So ``auto`` never picks bf16 on a CPU that lacks it.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]


def cpu_has_fast_bf16() -> bool:
    """Returns True when this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_device() -> str:
    """Returns ``cuda`` when a GPU is visible, then ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(requested: str, device: str | None = None) -> Precision:
    """Returns the precision to train in for ``requested`` (``auto`` decides by device).

    ``auto`` means bf16 on GPUs that support it and on CPUs with native bf16, fp32
    everywhere else (fp16 is never chosen automatically: it needs loss scaling and
    overflows more easily; ask for it explicitly).

    Raises:
        ValueError: If ``requested`` is not auto, fp32, bf16 or fp16.
    """
    if requested in ("fp32", "bf16", "fp16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}: use auto, fp32, bf16 or fp16")
    device = device or default_device()
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"
