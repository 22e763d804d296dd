"""Attention: Triton vs the torch reference vs scaled_dot_product_attention (flash on GPU).

extra_info: TFLOP/s (forward 4*B*H*N^2*D, backward 2.5x that) next to the time.
"""

import lensperf_kernels as kernels
import pytest
import torch
import torch.nn.functional as F
from lensperf_kernels.attention import attention_reference

from benchmarks.shapes import (
    ATTENTION_HEAD_DIMS,
    ATTENTION_SEQS,
    ATTENTION_WIDTH,
    DEVICE,
    GPU,
    batch,
    sync,
)

PROVIDERS = {
    "triton": lambda q, k, v: kernels.attention(q, k, v),
    "torch_reference": lambda q, k, v: attention_reference(q, k, v, q.shape[-1] ** -0.5)[0],
    "sdpa": F.scaled_dot_product_attention,
}
FLOP_FACTOR = {"forward": 1.0, "backward": 2.5, "both": 3.5}


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("N", ATTENTION_SEQS)
@pytest.mark.parametrize("D", ATTENTION_HEAD_DIMS)
@pytest.mark.parametrize("pass_", ["forward", "backward", "both"])
def test_attention(benchmark, provider, N, D, pass_):
    if provider == "triton" and not GPU:
        pytest.skip("Triton is timed on a GPU only (the CPU interpreter is not representative)")
    B, H = batch(), ATTENTION_WIDTH // D
    dtype = torch.bfloat16 if GPU else torch.float32
    q, k, v = (
        torch.randn(B, H, N, D, device=DEVICE, dtype=dtype, requires_grad=pass_ != "forward")
        for _ in range(3)
    )
    grad = torch.randn(B, H, N, D, device=DEVICE, dtype=dtype)
    fn = PROVIDERS[provider]

    if pass_ == "forward":

        def step():
            with torch.no_grad():
                fn(q, k, v)
            sync()
    elif pass_ == "backward":
        out = fn(q, k, v)

        def step():
            torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
            sync()
    else:

        def step():
            torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
            sync()

    benchmark(step)
    flops = 4 * B * H * N * N * D * FLOP_FACTOR[pass_]
    benchmark.extra_info.update(B=B, H=H, N=N, D=D, TFLOPs=flops / benchmark.stats["median"] / 1e12)
