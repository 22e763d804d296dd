"""Reusable Triton kernels for ViT / MAE training. Imports torch and triton only, never lensperf.

    from lensperf_kernels import random_masking, unshuffle, attention, active_backend

Each op runs its Triton kernel on CUDA tensors (and on CPU tensors under TRITON_INTERPRET=1)
and its torch reference elsewhere; all are torch custom ops, so torch.compile(fullgraph=True)
traces through them.
"""

from ._backend import active_backend
from .attention import attention
from .masking import random_masking, unshuffle

__all__ = ["active_backend", "attention", "random_masking", "unshuffle"]
