"""GPU-only checks: the compiled (not interpreted) kernels on CUDA, bf16 included. The CPU run
skips these; benchmarks/gpu_check.sh runs them. By hand: TRITON_INTERPRET=0 pytest -m gpu
(tests/conftest.py turns the interpreter on where the variable is unset)."""

import lensperf_kernels as kernels
import pytest
import torch
from lensperf_kernels.masking import random_masking_reference, unshuffle_reference

from .helpers import assert_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("L, D", [(64, 192), (225, 768), (400, 384), (17, 33)])
def test_masking_on_cuda_equals_reference(L, D, dtype):
    x = torch.randn(64, L, D, device="cuda", dtype=dtype)
    noise = torch.rand(64, L, device="cuda")
    assert kernels.active_backend(x) == "triton"
    got = kernels.random_masking(x, 0.75, noise=noise)
    want = random_masking_reference(x, noise, int(L * 0.25))
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    token = torch.randn(D, device="cuda", dtype=dtype)
    assert torch.equal(
        kernels.unshuffle(got[0], token, got[2]), unshuffle_reference(want[0], token, want[2])
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("N", [17, 65, 197, 401])
@pytest.mark.parametrize("D", [32, 64, 128])
def test_attention_on_cuda_matches_float64(N, D, dtype):
    q, k, v, do = (torch.randn(2, 3, N, D, device="cuda", dtype=torch.float64) for _ in range(4))
    qd, kd, vd = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = kernels.attention(qd, kd, vd)
    out.backward(do.to(dtype))
    q64, k64, v64 = (t.to(dtype).double().requires_grad_() for t in (q, k, v))
    ref = torch.softmax(q64 @ k64.transpose(-1, -2) * D**-0.5, -1) @ v64
    ref.backward(do.to(dtype).double())
    for got, want, name in ((out, ref, "out"), (qd.grad, q64.grad, "dq"), (kd.grad, k64.grad, "dk"),
                            (vd.grad, v64.grad, "dv")):  # fmt: skip
        assert_close(got, want, dtype, name)


def test_attention_backward_deterministic_on_cuda():
    q, k, v, do = (
        torch.randn(8, 6, 257, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4)
    )
    grads = []
    for _ in range(5):
        ts = [t.clone().requires_grad_() for t in (q, k, v)]
        kernels.attention(*ts).backward(do)
        grads.append(torch.cat([t.grad.flatten() for t in ts]))
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_kernels_are_compiled_not_interpreted():
    # Under TRITON_INTERPRET=1 every check above would pass on the interpreter, timing nothing
    # and proving nothing about the compiled kernels.
    from lensperf_kernels import _backend

    assert not _backend.INTERPRETER and _backend.on_gpu_compiler()
