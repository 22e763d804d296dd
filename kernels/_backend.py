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


def on_gpu_compiler() -> bool:
    """True when kernels are compiled for a real GPU (autotuning allowed)."""
    return HAS_TRITON and not INTERPRETER and torch.cuda.is_available()
