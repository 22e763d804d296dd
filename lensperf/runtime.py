"""Where and in what precision lensperf computes: device and autocast resolution, in one place
for the trainer, the bench, evaluation and the API."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from lensperf.errors import ConfigError


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware on `device`. Without it (a CPU with no AVX-512-BF16/AMX)
    torch emulates bf16 matmuls, many times slower than fp32."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()


def resolve_device(choice: str) -> torch.device:
    """ "auto" (CUDA when there is one), "cuda" or "cpu"; under torchrun, this rank's GPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device", "cuda, but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`, None for fp32. "auto" is bf16 where the
    hardware has it, fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16" or native_bf16(device):
        return torch.bfloat16
    return None
