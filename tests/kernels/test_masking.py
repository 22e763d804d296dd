import math

import lensperf_kernels as kernels
import pytest
import torch
from lensperf_kernels.masking import random_masking_reference, unshuffle_reference

from .helpers import assert_close

SHAPES = [(1, 1, 1), (2, 17, 5), (3, 64, 192), (2, 197, 33), (1, 400, 16)]  # (B, L, D)
RATIOS = [0.0, 0.5, 0.75, 0.9]
DTYPES = [torch.float32, torch.float16]


def cases():
    for shape in SHAPES:
        for ratio in RATIOS:
            if int(shape[1] * (1 - ratio)) >= 1:
                yield shape, ratio


def mae_reference(x, noise, mask_ratio):
    """facebookresearch/mae's random_masking, verbatim in spirit (argsort + gather)."""
    B, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([B, L], dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def inputs(B, L, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, D, generator=g).to(dtype), torch.rand(B, L, generator=g)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, ratio", list(cases()), ids=str)
def test_masking_equals_mae_exactly(shape, ratio, dtype):
    x, noise = inputs(*shape, dtype)
    assert kernels.active_backend(x) == "triton"
    got = kernels.random_masking(x, ratio, noise=noise)
    want = mae_reference(x, noise, ratio)
    for g, w, name in zip(got, want, ("x_visible", "mask", "ids_restore")):
        assert g.dtype == w.dtype, name
        assert torch.equal(g, w), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, ratio", list(cases()), ids=str)
def test_unshuffle_inverts_masking_and_gradients_match_float64(shape, ratio, dtype):
    B, L, D = shape
    x, noise = inputs(B, L, D, dtype, seed=1)
    token = torch.randn(1, 1, D).to(dtype)
    x_g, token_g = x.clone().requires_grad_(), token.clone().requires_grad_()
    visible, mask, ids = kernels.random_masking(x_g, ratio, noise=noise)
    full = kernels.unshuffle(visible, token_g, ids)
    expected = torch.where(mask.bool().unsqueeze(-1), token.expand(B, L, D), x)
    assert torch.equal(full, expected)

    grad = torch.randn(B, L, D, generator=torch.Generator().manual_seed(2)).to(dtype)
    full.backward(grad)
    # float64 reference through MAE's ops, with autograd.
    x64, token64 = x.double().requires_grad_(), token.double().requires_grad_()
    v64, _, ids64 = mae_reference(x64, noise, ratio)
    unshuffle_reference(v64, token64.reshape(D), ids64).backward(grad.double())
    assert_close(x_g.grad, x64.grad, dtype, "dx")
    assert_close(token_g.grad, token64.grad, dtype, "dtoken")
    assert token_g.grad.shape == token.shape


def test_unshuffle_gradient_to_visible_tokens():
    B, L, K, D = 3, 20, 7, 12
    x, noise = inputs(B, L, D, torch.float32, seed=3)
    visible, _, ids = kernels.random_masking(x, 1 - K / L, noise=noise)
    v = visible.clone().requires_grad_()
    grad = torch.randn(B, L, D)
    kernels.unshuffle(v, torch.zeros(D), ids).backward(grad)
    v64 = visible.double().requires_grad_()
    unshuffle_reference(v64, torch.zeros(D, dtype=torch.float64), ids).backward(grad.double())
    assert_close(v.grad, v64.grad, torch.float32, "dvisible")


def test_ties_keep_position_order():
    x, _ = inputs(4, 50, 8, torch.float32)
    noise = torch.randint(0, 5, (4, 50)).float()  # many equal values
    got = kernels.random_masking(x, 0.6, noise=noise)
    want = random_masking_reference(x, noise, int(50 * 0.4))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_default_noise_keeps_every_position_equally_often():
    torch.manual_seed(0)
    B, L = 4000, 16
    _, mask, _ = kernels.random_masking(torch.zeros(B, L, 1), 0.75)
    kept = (1 - mask).sum(0)  # each position kept with probability 1/4
    expected = B * int(L * 0.25) / L
    chi2 = ((kept - expected) ** 2 / expected).sum().item()
    # chi-square with 15 degrees of freedom: P(chi2 > 37.7) = 0.001
    assert chi2 < 37.7, chi2
    assert torch.equal(mask.sum(1), torch.full((B,), 12.0))


def test_reruns_are_bitwise_equal():
    x, noise = inputs(8, 225, 64, torch.float32, seed=4)
    token = torch.randn(64)
    outs = []
    for _ in range(3):
        xg = x.clone().requires_grad_()
        visible, _, ids = kernels.random_masking(xg, 0.75, noise=noise)
        kernels.unshuffle(visible * 2, token, ids).sum().backward()
        outs.append((visible, xg.grad))
    for visible, grad in outs[1:]:
        assert torch.equal(visible, outs[0][0]) and torch.equal(grad, outs[0][1])


def test_torch_path_same_results(monkeypatch):
    x, noise = inputs(2, 30, 6, torch.float32, seed=5)
    triton_out = kernels.random_masking(x, 0.5, noise=noise)
    monkeypatch.setattr(kernels._backend, "INTERPRETER", False)
    assert kernels.active_backend(x) == "torch"
    torch_out = kernels.random_masking(x, 0.5, noise=noise)
    assert all(torch.equal(a, b) for a, b in zip(triton_out, torch_out))


@pytest.mark.parametrize(
    "args, kwargs, error, fragment",
    [
        ((torch.randn(2, 5), 0.5), {}, ValueError, "3 dimensions"),
        ((torch.randn(2, 5, 3), 1.0), {}, ValueError, "mask_ratio"),
        ((torch.randn(2, 5, 3), -0.1), {}, ValueError, "mask_ratio"),
        ((torch.randn(2, 3, 3), 0.9), {}, ValueError, "keeps no token"),
        ((torch.randn(2, 5, 3), 0.5), {"noise": torch.rand(2, 4)}, ValueError, "noise must have"),
        (
            (torch.randn(2, 5, 3), 0.5),
            {"noise": torch.full((2, 5), math.nan)},
            ValueError,
            "finite",
        ),
        (
            (torch.randn(2, 5, 3), 0.5),
            {"noise": torch.ones(2, 5, dtype=torch.int64)},
            TypeError,
            "floating",
        ),
        ((torch.ones(2, 5, 3, dtype=torch.int64), 0.5), {}, TypeError, "floating-point"),
        (([[1.0]], 0.5), {}, TypeError, "torch.Tensor"),
    ],
)
def test_masking_bad_inputs(args, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        kernels.random_masking(*args, **kwargs)


@pytest.mark.parametrize(
    "visible, token, ids, error, fragment",
    [
        (
            torch.randn(2, 3, 4),
            torch.randn(5),
            torch.zeros(2, 6, dtype=torch.int64),
            ValueError,
            "D=4",
        ),
        (torch.randn(2, 3, 4), torch.randn(4), torch.zeros(2, 6), TypeError, "int64"),
        (
            torch.randn(2, 3, 4),
            torch.randn(4),
            torch.zeros(3, 6, dtype=torch.int64),
            ValueError,
            "batch",
        ),
        (
            torch.randn(2, 3, 4),
            torch.randn(4),
            torch.zeros(2, 2, dtype=torch.int64),
            ValueError,
            "L=2 < K=3",
        ),
        (
            torch.randn(3, 4),
            torch.randn(4),
            torch.zeros(2, 6, dtype=torch.int64),
            ValueError,
            "3 dimensions",
        ),
    ],
)
def test_unshuffle_bad_inputs(visible, token, ids, error, fragment):
    with pytest.raises(error, match=fragment):
        kernels.unshuffle(visible, token, ids)


def test_out_of_range_ids_never_read_out_of_bounds():
    visible = torch.randn(1, 2, 4)
    ids = torch.tensor([[0, 1, 7, -3, 2]])  # 7, -3: not a permutation; 2 >= K: mask token
    out = kernels.unshuffle(visible, torch.full((4,), 9.0), ids)
    assert torch.equal(out[0, 0], visible[0, 0]) and torch.equal(out[0, 1], visible[0, 1])
    assert (out[0, 2:] == 9.0).all()
