"""The shared tolerance table and assert_close for kernel tests.

Every kernel result is compared with a float64 reference computed from the same (rounded)
inputs, so a tolerance only has to cover the kernel's own arithmetic:
  float32: float32 accumulation of at most a few hundred terms -> ~1e-6 relative; 1e-5 leaves
           room for reordered sums.
  float16: inputs exact, products accumulated in float32, but P and dS are rounded to float16
           (11-bit mantissa, 2^-11 = 4.9e-4) before the second matmul, and outputs are rounded
           once more: a few units of 4.9e-4 on values of order 1.
  bfloat16: 8-bit mantissa (2^-8 = 3.9e-3): the same reasoning, GPU only (the interpreter
           computes bfloat16 wrongly).
"""

from __future__ import annotations

import torch

TOLERANCES = {  # dtype: (atol, rtol)
    torch.float32: (1e-5, 1e-4),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str):
    """|actual - expected| <= atol + rtol * |expected| elementwise, by the table for `dtype`.
    NaN or inf where the reference is finite fails, naming the first bad index."""
    atol, rtol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    finite_a, finite_e = torch.isfinite(a), torch.isfinite(e)
    if not torch.equal(finite_a, finite_e):
        index = tuple(torch.nonzero(finite_a != finite_e)[0].tolist())
        raise AssertionError(f"{what}: non-finite mismatch at {index}: {a[index]} vs {e[index]}")
    err = (a - e).abs().nan_to_num(0.0)
    bad = err > atol + rtol * e.abs().nan_to_num(0.0)
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())} of {bad.numel()} elements off; first at {index}:"
            f" {a[index].item():.6g} vs {e[index].item():.6g}; max error {err.max().item():.3g}"
        )
