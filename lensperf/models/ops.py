"""The one place lensperf reaches the kernels: models call these and never know which
implementation runs.

One switch decides whether the `kernels` custom ops run (Triton on CUDA; Triton's interpreter
on CPU under TRITON_INTERPRET=1): "auto" (on CUDA tensors only), "on" or "off". It starts from
the environment variable LENSPERF_KERNELS (auto, on/1 or off/0), read once at import, and
`set_kernels` changes it (the trainer does, from `runtime.kernels`). Without the kernels, the
ops are the plain torch paths: MAE's argsort+gather, and attention as
`scaled_dot_product_attention` on CUDA or explicit matmuls on CPU (faster there, see below).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import lensperf_kernels as kernels
import torch
import torch.nn.functional as F
from lensperf_kernels.masking import random_masking_reference, unshuffle_reference
from torch import Tensor

Mode = Literal["auto", "on", "off"]
ENV = "LENSPERF_KERNELS"
_SPELLINGS: dict[str, Mode] = {"auto": "auto", "on": "on", "1": "on", "off": "off", "0": "off"}


def _mode_from_env() -> Mode:
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in _SPELLINGS:
        raise ValueError(f"{ENV}={value!r}: expected auto, on/1 or off/0")
    return _SPELLINGS[value]


_mode: Mode = _mode_from_env()


def set_kernels(mode: Mode) -> Mode:
    """Switch the kernels "auto" / "on" / "off"; returns the previous setting."""
    global _mode
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"kernels mode must be auto, on or off, got {mode!r}")
    previous, _mode = _mode, mode
    return previous


def kernels_mode() -> Mode:
    return _mode


@contextmanager
def kernels_switched(mode: Mode) -> Iterator[None]:
    """The switch set to `mode` inside the block ("auto" leaves it as it is), then restored."""
    previous = set_kernels(_mode if mode == "auto" else mode)
    try:
        yield
    finally:
        set_kernels(previous)


def kernels_active(t: Tensor) -> bool:
    """Whether the ops run the kernels for tensors like `t` (a trace-time constant)."""
    wanted = _mode == "on" or (_mode == "auto" and t.is_cuda)
    return wanted and kernels.active_backend(t) == "triton"


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if kernels_active(q):
        return kernels.attention(q, k, v)
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v)
    # On CPU the explicit matmuls beat SDPA's flash kernel at ViT sizes, most of all in bf16:
    # forward + backward at (B, H, N, D) = (128, 3, 17, 64) took 6.8 ms vs 43.8 ms in bf16
    # (8.3 vs 9.1 ms in fp32), and (128, 4, 65, 32) 45 vs 119 ms, on the 2-core EPYC of CI.
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.float().softmax(dim=-1).to(v.dtype), v)


def random_masking(
    x: Tensor, mask_ratio: float, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE masking of x (B, L, D): keeps the tokens with the smallest `noise` (B, L; drawn
    uniformly when None)."""
    if kernels_active(x):
        return kernels.random_masking(x, mask_ratio, noise=noise)
    B, L, _ = x.shape
    if noise is None:
        noise = torch.rand(B, L, device=x.device)
    return random_masking_reference(x, noise, int(L * (1 - mask_ratio)))


def unshuffle(x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    if kernels_active(x_visible):
        return kernels.unshuffle(x_visible, mask_token, ids_restore)
    return unshuffle_reference(x_visible, mask_token.reshape(-1), ids_restore)
