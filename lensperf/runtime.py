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
    """Whether bf16 runs in hardware on `device`: CUDA compute capability 8.0 or newer (A100,
    H100, RTX 30xx on), or a CPU with AVX-512-BF16 or AMX. Elsewhere (T4, V100, AVX2 CPUs) it is
    emulated, many times slower than fp16 or fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return cpu_has_bf16()


def replays_cuda_graphs(compile_: bool, compile_mode: str, device: torch.device) -> bool:
    """Whether a step compiled so replays as CUDA graphs: then each step must be marked, since
    the graphs reuse the last step's output memory."""
    return compile_ and compile_mode == "reduce-overhead" and device.type == "cuda"


def resolve_device(choice: str) -> torch.device:
    """ "auto" (CUDA when there is one), "cuda" or "cpu"; under torchrun, this rank's GPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device", "cuda, but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`, None for fp32. "auto": bf16 where the
    hardware has it; on an older CUDA GPU fp16 (the trainer then scales the loss); else fp32."""
    explicit = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in explicit:
        return explicit[precision]
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def run_autocast(precision: str, device: torch.device) -> torch.autocast:
    """Autocast at a run's `runtime.precision` on `device` (off for fp32), as in training (which
    resolves the dtype once and uses autocast_as). Evaluation and prediction from a checkpoint
    use it, so a model is scored and applied at the precision it was trained and selected at.
    That matters for a batch-norm network: the ResNet baseline's accuracy can move by several
    points between bf16 and fp32 (docs/recipes.md)."""
    return autocast_as(autocast_dtype(precision, device), device)


def autocast_as(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """Autocast to an already resolved `dtype` (None: off, fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
