"""Which implementation runs: the Triton kernel or the pure-torch reference.

Triton runs on CUDA tensors, and on CPU tensors when the Triton interpreter is on
(TRITON_INTERPRET=1, set before `kernels` is imported), so CPU tests exercise the real kernels.
Everything else takes the torch reference. Whether lensperf's models use these ops at all is
decided by lensperf (its `lensperf.models.ops`), not here.
"""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships for Linux x86_64 only
    HAS_TRITON = False

# Read once, like Triton itself, which decides when each @triton.jit decoration runs.
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"


def active_backend(tensor: torch.Tensor) -> str:
    """ "triton" or "torch": the implementation the ops will run for `tensor`."""
    if not HAS_TRITON:
        return "torch"
    if INTERPRETER:
        return "triton" if tensor.device.type in ("cpu", "cuda") else "torch"
    return "triton" if tensor.is_cuda else "torch"


# LENSPERF_AUTOTUNE=0: one block config per launch, as under the interpreter. Autotuning
# compiles and times every config for every new (N, head dim, dtype): right for a long run,
# minutes of compiles for a test grid (the GPU tests use it; on an H200 with a cold cache they
# ran past 80 s with it on).
AUTOTUNE = os.environ.get("LENSPERF_AUTOTUNE", "1") != "0"


def autotuning() -> bool:
    """True when block sizes are autotuned: compiled for a GPU, and not switched off."""
    return on_gpu_compiler() and AUTOTUNE


def on_gpu_compiler() -> bool:
    """True when kernels are compiled for a real GPU (autotuning allowed)."""
    return HAS_TRITON and not INTERPRETER and torch.cuda.is_available()
