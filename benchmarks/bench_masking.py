"""Masking and unshuffle: Triton vs the torch reference vs MAE's argsort+gather.

extra_info: GB/s moved (kept rows read + written, noise, ids and mask) next to the time.
"""

import lensperf_kernels as kernels
import pytest
import torch
from lensperf_kernels.masking import random_masking_reference, unshuffle_reference

from benchmarks.shapes import DEVICE, GPU, MASK_RATIO, MASKING_SHAPES, batch, sync


def mae_masking(x, noise, len_keep):
    """What users run today: facebookresearch/mae's random_masking."""
    B, L, D = x.shape
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x_masked = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones(B, L, device=x.device)
    mask[:, :len_keep] = 0
    return x_masked, torch.gather(mask, 1, ids_restore), ids_restore


def mae_unshuffle(x, token, ids_restore):
    B, K, D = x.shape
    tokens = token.repeat(B, ids_restore.shape[1] - K, 1)
    full = torch.cat([x, tokens], dim=1)
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).repeat(1, 1, D))


PROVIDERS = {
    "triton": lambda x, n, k: kernels.random_masking(x, MASK_RATIO, noise=n),
    "torch_reference": random_masking_reference,
    "mae_argsort_gather": mae_masking,
}
UNSHUFFLE = {
    "triton": lambda x, t, i: kernels.unshuffle(x, t, i),
    "torch_reference": lambda x, t, i: unshuffle_reference(x, t.reshape(-1), i),
    "mae_argsort_gather": mae_unshuffle,
}


SHAPE_PARAMS = [pytest.param(L, D, id=f"L{L}-D{D}") for L, D in MASKING_SHAPES]


def _skip_unless_runnable(provider):
    if provider == "triton" and not GPU:
        pytest.skip("Triton is timed on a GPU only (the CPU interpreter is not representative)")


def _bytes(B, L, D, K, itemsize):
    return 2 * B * K * D * itemsize + B * L * (4 + 8 + itemsize)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("L, D", SHAPE_PARAMS)
@pytest.mark.parametrize("pass_", ["forward", "backward", "both"])
def test_masking(benchmark, provider, L, D, pass_):
    _skip_unless_runnable(provider)
    B = batch()
    K = int(L * (1 - MASK_RATIO))
    dtype = torch.bfloat16 if GPU else torch.float32
    x = torch.randn(B, L, D, device=DEVICE, dtype=dtype, requires_grad=pass_ != "forward")
    noise = torch.rand(B, L, device=DEVICE)
    fn = PROVIDERS[provider]
    args = (x, noise, MASK_RATIO) if provider == "triton" else (x, noise, K)
    grad = torch.randn(B, K, D, device=DEVICE, dtype=dtype)

    if pass_ == "forward":

        def step():
            fn(*args)
            sync()
    elif pass_ == "backward":
        visible = fn(*args)[0]

        def step():
            torch.autograd.grad(visible, x, grad, retain_graph=True)
            sync()
    else:

        def step():
            torch.autograd.grad(fn(*args)[0], x, grad)
            sync()

    benchmark(step)
    moved = _bytes(B, L, D, K, x.element_size()) * (2 if pass_ == "both" else 1)
    benchmark.extra_info.update(B=B, L=L, D=D, GBps=moved / benchmark.stats["median"] / 1e9)


@pytest.mark.parametrize("provider", list(UNSHUFFLE))
@pytest.mark.parametrize("L, D", SHAPE_PARAMS)
def test_unshuffle_forward_backward(benchmark, provider, L, D):
    _skip_unless_runnable(provider)
    B = batch()
    K = int(L * (1 - MASK_RATIO))
    dtype = torch.bfloat16 if GPU else torch.float32
    x = torch.randn(B, K, D, device=DEVICE, dtype=dtype, requires_grad=True)
    token = torch.zeros(1, 1, D, device=DEVICE, dtype=dtype, requires_grad=True)
    ids = torch.argsort(torch.rand(B, L, device=DEVICE), dim=1)
    grad = torch.randn(B, L, D, device=DEVICE, dtype=dtype)
    fn = UNSHUFFLE[provider]

    def step():
        torch.autograd.grad(fn(x, token, ids), (x, token), grad)
        sync()

    benchmark(step)
    moved = 2 * (B * K * D + B * L * D) * x.element_size()
    benchmark.extra_info.update(B=B, L=L, D=D, GBps=moved / benchmark.stats["median"] / 1e9)
