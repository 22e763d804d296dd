import math

import lensperf_kernels as kernels
import pytest
import torch
from lensperf_kernels.attention import attention_backward_reference, attention_reference

from .helpers import assert_close

SHAPES = [(1, 1, 1), (2, 3, 17), (1, 2, 64), (1, 2, 65), (2, 1, 197)]  # (B, H, N)
HEAD_DIMS = [16, 32, 64, 128]
CPU_DTYPES = [torch.float32, torch.float16]


def reference64(q, k, v, do, scale):
    """Float64 attention and its gradients by autograd (independent of the kernel's math)."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
    out.backward(do.double())
    return out, q.grad, k.grad, v.grad


def make_inputs(B, H, N, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(4))
    return [t.to(dtype) for t in (q, k, v, do)]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_match_float64(shape, D, dtype):
    B, H, N = shape
    q, k, v, do = make_inputs(B, H, N, D, dtype)
    assert kernels.active_backend(q) == "triton"
    scale = 1 / math.sqrt(D)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = kernels.attention(qg, kg, vg)
    out.backward(do)
    ref_out, ref_dq, ref_dk, ref_dv = reference64(q, k, v, do, scale)
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype, "out")
    assert_close(qg.grad, ref_dq, dtype, "dq")
    assert_close(kg.grad, ref_dk, dtype, "dk")
    assert_close(vg.grad, ref_dv, dtype, "dv")


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_torch_reference_path_matches_too(dtype, monkeypatch):
    monkeypatch.setattr(kernels._backend, "INTERPRETER", False)
    q, k, v, do = make_inputs(2, 2, 33, 32, dtype)
    assert kernels.active_backend(q) == "torch"
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    out = kernels.attention(qg, kg, vg, scale=0.3)
    out.backward(do)
    ref = reference64(q, k, v, do, 0.3)
    for got, want, name in zip((out, qg.grad, kg.grad, vg.grad), ref, "o q k v".split()):
        assert_close(got, want, dtype, name)


def test_custom_scale_and_non_contiguous_inputs():
    q, k, v, do = make_inputs(2, 3, 20, 16, torch.float32, seed=1)
    # (B, N, H, D) storage viewed as (B, H, N, D), as a ViT's qkv split produces.
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    out = kernels.attention(qt, kt, vt, scale=0.5)
    assert_close(out, reference64(q, k, v, do, 0.5)[0], torch.float32, "out")


def test_backward_is_deterministic():
    q, k, v, do = make_inputs(2, 2, 97, 32, torch.float32, seed=2)
    grads = []
    for _ in range(3):
        qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
        kernels.attention(qg, kg, vg).backward(do)
        grads.append(torch.cat([qg.grad.flatten(), kg.grad.flatten(), vg.grad.flatten()]))
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_lse_matches_logsumexp():
    q, k, v, _ = make_inputs(1, 2, 40, 16, torch.float32, seed=3)
    _, lse = torch.ops.lensperf_kernels.attention_fwd(q, k, v, 0.25)
    expected = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) * 0.25, dim=-1)
    assert_close(lse, expected, torch.float32, "lse")


def test_references_agree_with_autograd():
    q, k, v, do = make_inputs(1, 1, 9, 16, torch.float64, seed=4)
    out, lse = attention_reference(q, k, v, 0.25)
    grads = attention_backward_reference(do, q, k, v, out, lse, 0.25)
    ref = reference64(q, k, v, do, 0.25)
    for got, want in zip((out, *grads), ref):
        torch.testing.assert_close(got, want.detach())


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: [torch.randn(2, 3, 16)] * 3, ValueError, "(B, H, N, D)"),
        (
            lambda: [torch.randn(1, 1, 4, 16), torch.randn(1, 1, 5, 16), torch.randn(1, 1, 4, 16)],
            ValueError,
            "shapes differ",
        ),
        (lambda: [torch.randn(1, 1, 4, 24)] * 3, ValueError, "head dim 24"),
        (lambda: [torch.randn(1, 1, 4, 16, dtype=torch.float64)] * 3, TypeError, "float64"),
        (
            lambda: [
                torch.randn(1, 1, 4, 16),
                torch.randn(1, 1, 4, 16).half(),
                torch.randn(1, 1, 4, 16),
            ],
            TypeError,
            "dtypes differ",
        ),
        (lambda: [torch.randn(1, 1, 0, 16)] * 3, ValueError, "at least one token"),
        (lambda: [torch.randn(1, 1, 4, 16).numpy()] * 3, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(make, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        kernels.attention(*make())


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), "x"])
def test_bad_scale(scale):
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="scale"):
        kernels.attention(q, q, q, scale=scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("N", [65, 257])
@pytest.mark.parametrize("D", [32, 64])
def test_bf16_error_at_most_twice_torch(N, D):
    """flash-attention's criterion: our bf16 error is at most 2x torch's own bf16 error, both
    against a float32 reference, forward and every gradient."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(4, 6, N, D, device="cuda", generator=g) for _ in range(4))

    def run(fn, dtype):
        ts = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*ts)
        out.backward(do.to(dtype))
        return [out.float()] + [t.grad.float() for t in ts]

    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = run(sdpa, torch.float32)
    ours = run(kernels.attention, torch.bfloat16)
    theirs = run(sdpa, torch.bfloat16)
    for a, b, r in zip(ours, theirs, ref):
        assert (a - r).abs().max() <= 2 * (b - r).abs().max() + 1e-5


def test_autotune_keeps_only_blocks_the_sequence_fills():
    import triton
    from lensperf_kernels.attention import _useful_blocks

    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}) for m, n in ((32, 32), (64, 32), (128, 64))
    ]
    sizes = lambda kept: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kept]  # noqa: E731
    assert sizes(_useful_blocks(configs, {"N": 17})) == [(32, 32)]
    assert sizes(_useful_blocks(configs, {"N": 65})) == [(32, 32), (64, 32), (128, 64)]
    assert sizes(_useful_blocks(configs, {"N": 33})) == [(32, 32), (64, 32)]
    assert sizes(_useful_blocks(configs[2:], {"N": 5})) == [(128, 64)]  # never none left
