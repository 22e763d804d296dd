"""The benchmark shapes of this project, in one place.

On a CPU the batch is cut to CPU_BATCH: the Triton interpreter is far too slow to time, so CPU
runs compare the torch paths only, and at B = 256 the largest shapes take seconds a call.
"""

import torch

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
BATCH = 256
CPU_BATCH = 16

# MAE token tensors (B, L, D): 64 / 225 / 400 patches, ViT-T / S / B widths.
MASKING_SHAPES = [(L, D) for L in (64, 225, 400) for D in (192, 384, 768)]
MASK_RATIO = 0.75

# Attention (B, H, N, D): N = patches + CLS token, heads of 32 / 64 channels; width 384.
ATTENTION_SEQS = [17, 65, 257, 401]
ATTENTION_HEAD_DIMS = [32, 64]
ATTENTION_WIDTH = 384


def batch() -> int:
    return BATCH if GPU else CPU_BATCH


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()
