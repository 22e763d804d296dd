"""torch.compile(fullgraph=True) traces through all three ops (custom op + fake + autograd)."""

import lensperf_kernels as kernels
import pytest
import torch


def tiny_mae_step(x_BLD, noise_BL, token_D, w_DD):
    visible_BKD, mask_BL, ids_BL = kernels.random_masking(x_BLD @ w_DD, 0.75, noise=noise_BL)
    B, K, D = visible_BKD.shape
    qkv = visible_BKD.view(B, K, 2, 16).transpose(1, 2)  # (B, H=2, K, 16)
    attended = kernels.attention(qkv, qkv, qkv).transpose(1, 2).reshape(B, K, D)
    full_BLD = kernels.unshuffle(attended, token_D, ids_BL)
    return ((full_BLD - x_BLD) ** 2).mean(-1).mul(mask_BL).sum() / mask_BL.sum()


@pytest.mark.parametrize("disable_kernels", [False, True], ids=["triton", "torch"])
def test_compiled_equals_eager(disable_kernels, monkeypatch):
    if disable_kernels:
        monkeypatch.setattr(kernels._backend, "INTERPRETER", False)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 20, 32, generator=g), torch.rand(3, 20, generator=g)
    token, w = torch.randn(32, generator=g), torch.randn(32, 32, generator=g) / 6

    def run(fn):
        t, ww = token.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(x, noise, t, ww)
        loss.backward()
        return loss.detach(), t.grad, ww.grad

    eager = run(tiny_mae_step)
    compiled = run(torch.compile(tiny_mae_step, fullgraph=True))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_kernels_never_import_lensperf():
    import subprocess
    import sys

    code = (
        "import sys, lensperf_kernels; "
        "print(sorted(m for m in sys.modules if m == 'lensperf' or m.startswith('lensperf.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
