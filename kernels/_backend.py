"""Which implementation runs: the Triton kernel or the pure-torch reference.

Triton runs on CUDA tensors, and on CPU tensors when the Triton interpreter is on
(TRITON_INTERPRET=1, set before `kernels` is imported), so CPU tests exercise the real
kernels. Everything else takes the torch reference. KERNELS_DISABLE=1 forces the reference.
"""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships for Linux x86_64 only
    HAS_TRITON = False


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def active_backend(tensor: torch.Tensor) -> str:
    """ "triton" or "torch": the implementation the ops will run for `tensor`."""
    if not HAS_TRITON or os.environ.get("KERNELS_DISABLE", "0") == "1":
        return "torch"
    if interpreter_on():
        return "triton" if tensor.device.type in ("cpu", "cuda") else "torch"
    return "triton" if tensor.is_cuda else "torch"


def on_gpu_compiler() -> bool:
    """True when kernels are compiled for a real GPU (autotuning allowed)."""
    return HAS_TRITON and not interpreter_on() and torch.cuda.is_available()
