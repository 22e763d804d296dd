"""The one place lensperf reaches the kernels: models call these and never know which
implementation runs.

With kernels enabled (the default on CUDA), masking, unshuffle and attention go through the
`kernels` custom ops (Triton on CUDA; Triton's interpreter on CPU under TRITON_INTERPRET=1).
Otherwise they are the plain torch paths: MAE's argsort+gather, and attention as
`scaled_dot_product_attention` on CUDA or explicit matmuls on CPU (faster there, see below).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

import kernels
from kernels.masking import random_masking_reference, unshuffle_reference

_use_kernels: bool | None = None  # None: decide per tensor (CUDA yes, CPU no)


def set_kernels(enabled: bool | None) -> None:
    """True / False forces the kernels on / off; None restores the default."""
    global _use_kernels
    _use_kernels = enabled


def kernels_active(t: Tensor) -> bool:
    if os.environ.get("LENSPERF_KERNELS") in ("0", "1"):
        wanted = os.environ["LENSPERF_KERNELS"] == "1"
    else:
        wanted = t.is_cuda if _use_kernels is None else _use_kernels
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


def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    if kernels_active(x):
        return kernels.random_masking(x, mask_ratio)
    B, L, _ = x.shape
    noise = torch.rand(B, L, device=x.device)
    return random_masking_reference(x, noise, int(L * (1 - mask_ratio)))


def unshuffle(x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    if kernels_active(x_visible):
        return kernels.unshuffle(x_visible, mask_token, ids_restore)
    return unshuffle_reference(x_visible, mask_token.reshape(-1), ids_restore)
