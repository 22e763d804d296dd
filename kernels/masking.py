"""MAE random patch masking and the decoder's unshuffle, as Triton kernels and torch ops.

Shape legend: B batch, L tokens, K kept (visible) tokens, D channels.

    random_masking(x_BLD, mask_ratio, noise=noise_BL) -> (x_visible_BKD, mask_BL, ids_restore_BL)
    unshuffle(x_visible_BKD, mask_token_D, ids_restore_BL) -> x_full_BLD

Semantics are MAE's (facebookresearch/mae): the K tokens with the smallest noise are kept, in
order of increasing noise; mask is 1 where a token was removed; ids_restore undoes the shuffle.
Two kernels do all the work, forward and backward:
  * `_scatter_visible`: out[b, r[b, l]] = x[b, l] for r < K, where r is either the rank of the
    noise (computed in the kernel: masking forward) or ids_restore (unshuffle backward);
  * `_unshuffle`: out[b, l] = x_visible[b, ids_restore[b, l]] or the mask token (unshuffle
    forward; with a zero token it is the masking backward).
Each output row is written by exactly one program, so results are deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import HAS_TRITON, active_backend

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _scatter_visible_kernel(
        X_ptr,  # (B, L, D) rows to scatter, contiguous
        R_ptr,  # (B, L) noise (COMPUTE_RANK) or ids_restore (int64)
        OUT_ptr,  # (B, K, D) visible rows, contiguous
        IDS_ptr,  # (B, L) int64 ids_restore, written when COMPUTE_RANK
        MASK_ptr,  # (B, L) mask (1 = removed), written when COMPUTE_RANK
        L,
        K,
        D,
        COMPUTE_RANK: tl.constexpr,
        BLOCK_L: tl.constexpr,  # >= L: the whole row of noise is ranked in one tile
        BLOCK_ROWS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < L
        if COMPUTE_RANK:
            cols = tl.arange(0, BLOCK_L)
            col_ok = cols < L
            noise_all = tl.load(R_ptr + b * L + cols, mask=col_ok, other=0.0).to(tl.float32)
            noise_row = tl.load(R_ptr + b * L + rows, mask=row_ok, other=0.0).to(tl.float32)
            # rank = how many tokens sort before this one (ties by position, as a stable sort).
            before = (noise_all[None, :] < noise_row[:, None]) | (
                (noise_all[None, :] == noise_row[:, None]) & (cols[None, :] < rows[:, None])
            )
            rank = tl.sum((before & col_ok[None, :]).to(tl.int32), axis=1).to(tl.int64)
            tl.store(IDS_ptr + b * L + rows, rank, mask=row_ok)
            removed = (rank >= K).to(MASK_ptr.dtype.element_ty)
            tl.store(MASK_ptr + b * L + rows, removed, mask=row_ok)
        else:
            rank = tl.load(R_ptr + b * L + rows, mask=row_ok, other=-1)
        keep = row_ok & (rank >= 0) & (rank < K)  # never index outside OUT, whatever R holds
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            io_mask = keep[:, None] & (d < D)[None, :]
            vals = tl.load(X_ptr + (b * L + rows[:, None]) * D + d[None, :], mask=io_mask)
            tl.store(OUT_ptr + (b * K + rank[:, None]) * D + d[None, :], vals, mask=io_mask)

    @triton.jit
    def _unshuffle_kernel(
        XV_ptr,  # (B, K, D) visible rows, contiguous
        TOKEN_ptr,  # (D,) mask token
        IDS_ptr,  # (B, L) int64 ids_restore
        OUT_ptr,  # (B, L, D) full rows, contiguous
        L,
        K,
        D,
        BLOCK_ROWS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        row_ok = rows < L
        d_ok = d < D
        source = tl.load(IDS_ptr + b * L + rows, mask=row_ok, other=-1)
        visible = row_ok & (source >= 0) & (source < K)
        vals = tl.load(
            XV_ptr + (b * K + source[:, None]) * D + d[None, :],
            mask=visible[:, None] & d_ok[None, :],
            other=0.0,
        )
        token = tl.load(TOKEN_ptr + d, mask=d_ok, other=0.0)
        out = tl.where(visible[:, None], vals, token[None, :])
        tl.store(
            OUT_ptr + (b * L + rows[:, None]) * D + d[None, :],
            out,
            mask=row_ok[:, None] & d_ok[None, :],
        )


# ---------------------------------------------------------------- launchers


def _block_sizes(L: int, D: int) -> tuple[int, int, int]:
    block_l = triton.next_power_of_2(L)
    # Keep the BLOCK_ROWS x BLOCK_L rank tile near 8k elements: registers, not local memory.
    block_rows = max(1, min(32, 8192 // block_l))
    block_d = min(256, triton.next_power_of_2(D))
    return block_l, block_rows, block_d


def _scatter_visible_triton(
    x_BLD: Tensor, r_BL: Tensor, len_keep: int, compute_rank: bool
) -> tuple[Tensor, Tensor, Tensor]:
    B, L, D = x_BLD.shape
    x_BLD, r_BL = x_BLD.contiguous(), r_BL.contiguous()
    out_BKD = x_BLD.new_zeros(B, len_keep, D)
    ids_BL = torch.empty(B, L, dtype=torch.int64, device=x_BLD.device)
    mask_BL = x_BLD.new_empty(B, L)
    block_l, block_rows, block_d = _block_sizes(L, D)
    grid = (B, triton.cdiv(L, block_rows))
    _scatter_visible_kernel[grid](
        x_BLD, r_BL, out_BKD, ids_BL, mask_BL, L, len_keep, D,
        COMPUTE_RANK=compute_rank, BLOCK_L=block_l, BLOCK_ROWS=block_rows, BLOCK_D=block_d,
    )  # fmt: skip
    return out_BKD, mask_BL, ids_BL


def _unshuffle_triton(x_BKD: Tensor, token_D: Tensor, ids_BL: Tensor) -> Tensor:
    B, K, D = x_BKD.shape
    L = ids_BL.shape[1]
    x_BKD, token_D, ids_BL = x_BKD.contiguous(), token_D.contiguous(), ids_BL.contiguous()
    out_BLD = x_BKD.new_empty(B, L, D)
    block_rows, block_d = 16, min(256, triton.next_power_of_2(D))
    grid = (B, triton.cdiv(L, block_rows), triton.cdiv(D, block_d))
    _unshuffle_kernel[grid](
        x_BKD, token_D, ids_BL, out_BLD, L, K, D, BLOCK_ROWS=block_rows, BLOCK_D=block_d
    )
    return out_BLD


# ---------------------------------------------------------------- torch references


def random_masking_reference(
    x_BLD: Tensor, noise_BL: Tensor, len_keep: int
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's argsort + gather (with a stable sort, so ties keep position order)."""
    B, L, D = x_BLD.shape
    ids_shuffle_BL = torch.argsort(noise_BL, dim=1, stable=True)
    ids_restore_BL = torch.argsort(ids_shuffle_BL, dim=1, stable=True)
    ids_keep_BK = ids_shuffle_BL[:, :len_keep]
    x_visible_BKD = torch.gather(x_BLD, 1, ids_keep_BK.unsqueeze(-1).expand(-1, -1, D))
    mask_BL = x_BLD.new_ones(B, L)
    mask_BL[:, :len_keep] = 0
    mask_BL = torch.gather(mask_BL, 1, ids_restore_BL)
    return x_visible_BKD, mask_BL, ids_restore_BL


def unshuffle_reference(x_BKD: Tensor, token_D: Tensor, ids_BL: Tensor) -> Tensor:
    """MAE's decoder: append mask tokens, then gather back into the original order."""
    B, K, D = x_BKD.shape
    L = ids_BL.shape[1]
    full_BLD = torch.cat([x_BKD, token_D.to(x_BKD.dtype).expand(B, L - K, D)], dim=1)
    return torch.gather(full_BLD, 1, ids_BL.unsqueeze(-1).expand(-1, -1, D))


def gather_visible_reference(x_BLD: Tensor, ids_BL: Tensor, len_keep: int) -> Tensor:
    """Rows of x_BLD that ids_restore sends to the first len_keep places, in that order."""
    ids_keep_BK = torch.argsort(ids_BL, dim=1, stable=True)[:, :len_keep]
    return torch.gather(x_BLD, 1, ids_keep_BK.unsqueeze(-1).expand(-1, -1, x_BLD.shape[-1]))


# ---------------------------------------------------------------- custom ops


@torch.library.custom_op("lensperf_kernels::random_masking", mutates_args=())
def _random_masking_op(
    x_BLD: Tensor, noise_BL: Tensor, len_keep: int
) -> tuple[Tensor, Tensor, Tensor]:
    if active_backend(x_BLD) == "triton":
        return _scatter_visible_triton(x_BLD, noise_BL, len_keep, compute_rank=True)
    return random_masking_reference(x_BLD, noise_BL, len_keep)


@_random_masking_op.register_fake
def _(x_BLD, noise_BL, len_keep):
    B, L, D = x_BLD.shape
    ids = torch.empty(B, L, dtype=torch.int64, device=x_BLD.device)
    return x_BLD.new_empty(B, len_keep, D), x_BLD.new_empty(B, L), ids


@torch.library.custom_op("lensperf_kernels::unshuffle", mutates_args=())
def _unshuffle_op(x_BKD: Tensor, token_D: Tensor, ids_BL: Tensor) -> Tensor:
    if active_backend(x_BKD) == "triton":
        return _unshuffle_triton(x_BKD, token_D.to(x_BKD.dtype), ids_BL)
    return unshuffle_reference(x_BKD, token_D, ids_BL)


@_unshuffle_op.register_fake
def _(x_BKD, token_D, ids_BL):
    return x_BKD.new_empty(x_BKD.shape[0], ids_BL.shape[1], x_BKD.shape[2])


@torch.library.custom_op("lensperf_kernels::gather_visible", mutates_args=())
def _gather_visible_op(x_BLD: Tensor, ids_BL: Tensor, len_keep: int) -> Tensor:
    if active_backend(x_BLD) == "triton":
        return _scatter_visible_triton(x_BLD, ids_BL, len_keep, compute_rank=False)[0]
    return gather_visible_reference(x_BLD, ids_BL, len_keep)


@_gather_visible_op.register_fake
def _(x_BLD, ids_BL, len_keep):
    return x_BLD.new_empty(x_BLD.shape[0], len_keep, x_BLD.shape[2])


def _masking_setup(ctx, inputs, output):
    x_BLD, _, len_keep = inputs
    ctx.save_for_backward(output[2])
    ctx.dim = x_BLD.shape[-1]


def _masking_backward(ctx, grad_visible_BKD, grad_mask, grad_ids):
    (ids_BL,) = ctx.saved_tensors
    zero_token_D = grad_visible_BKD.new_zeros(ctx.dim)
    return _unshuffle_op(grad_visible_BKD, zero_token_D, ids_BL), None, None


def _unshuffle_setup(ctx, inputs, output):
    x_BKD, token_D, ids_BL = inputs
    ctx.save_for_backward(ids_BL)
    ctx.len_keep = x_BKD.shape[1]
    ctx.token_dtype = token_D.dtype


def _unshuffle_backward(ctx, grad_full_BLD):
    (ids_BL,) = ctx.saved_tensors
    grad_visible_BKD = _gather_visible_op(grad_full_BLD, ids_BL, ctx.len_keep)
    removed_BL1 = (ids_BL >= ctx.len_keep).unsqueeze(-1)
    # Accumulate the token's gradient in float32: B*(L-K) half-precision terms lose digits.
    grad_token_D = (grad_full_BLD.float() * removed_BL1).sum(dim=(0, 1)).to(ctx.token_dtype)
    return grad_visible_BKD, grad_token_D, None


def _gather_setup(ctx, inputs, output):
    x_BLD, ids_BL, _ = inputs
    ctx.save_for_backward(ids_BL)
    ctx.dim = x_BLD.shape[-1]


def _gather_backward(ctx, grad_BKD):
    (ids_BL,) = ctx.saved_tensors
    return _unshuffle_op(grad_BKD, grad_BKD.new_zeros(ctx.dim), ids_BL), None, None


torch.library.register_autograd(
    "lensperf_kernels::random_masking", _masking_backward, setup_context=_masking_setup
)
torch.library.register_autograd(
    "lensperf_kernels::unshuffle", _unshuffle_backward, setup_context=_unshuffle_setup
)
torch.library.register_autograd(
    "lensperf_kernels::gather_visible", _gather_backward, setup_context=_gather_setup
)


# ---------------------------------------------------------------- public API


def _check_tensor(name: str, t, ndim: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_ids(ids_restore: Tensor, B: int, device: torch.device) -> None:
    _check_tensor("ids_restore", ids_restore, 2)
    if ids_restore.dtype != torch.int64:
        raise TypeError(f"ids_restore must be int64, got {ids_restore.dtype}")
    if ids_restore.shape[0] != B:
        raise ValueError(f"ids_restore has batch {ids_restore.shape[0]}, expected {B}")
    if ids_restore.device != device:
        raise ValueError(f"ids_restore is on {ids_restore.device}, expected {device}")


def random_masking(
    x: Tensor, mask_ratio: float, *, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep int(L * (1 - mask_ratio)) tokens per row of x (B, L, D): those with the smallest
    noise (uniform random when not given), in order of increasing noise.

    Returns (x_visible (B, K, D), mask (B, L) with 1 = removed, ids_restore (B, L) int64).
    Differentiable with respect to x.
    """
    _check_tensor("x", x, 3)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    B, L, D = x.shape
    if not isinstance(mask_ratio, int | float) or not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    len_keep = int(L * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no token of L={L}")
    if noise is None:
        noise = torch.rand(B, L, device=x.device)
    else:
        _check_tensor("noise", noise, 2)
        if tuple(noise.shape) != (B, L):
            raise ValueError(f"noise must have shape {(B, L)}, got {tuple(noise.shape)}")
        if noise.device != x.device:
            raise ValueError(f"noise is on {noise.device}, x on {x.device}")
        if not noise.is_floating_point():
            raise TypeError(f"noise must be floating point, got {noise.dtype}")
        if not torch.compiler.is_compiling() and not torch.isfinite(noise).all():
            raise ValueError("noise must be finite (NaN cannot be ranked)")
    return _random_masking_op(x, noise, len_keep)


def unshuffle(x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor) -> Tensor:
    """The decoder's inverse of random_masking: (B, K, D) visible tokens back to (B, L, D) in
    the original order, removed positions filled with mask_token ((D,), (1, D) or (1, 1, D)).
    Differentiable with respect to x_visible and mask_token."""
    _check_tensor("x_visible", x_visible, 3)
    if not isinstance(mask_token, Tensor):
        raise TypeError(f"mask_token must be a torch.Tensor, got {type(mask_token).__name__}")
    B, K, D = x_visible.shape
    if mask_token.numel() != D or (mask_token.ndim > 1 and mask_token.shape[-1] != D):
        raise ValueError(f"mask_token must hold D={D} values, got shape {tuple(mask_token.shape)}")
    if mask_token.device != x_visible.device:
        raise ValueError(f"mask_token is on {mask_token.device}, x_visible on {x_visible.device}")
    _check_ids(ids_restore, B, x_visible.device)
    if ids_restore.shape[1] < K:
        raise ValueError(f"ids_restore has L={ids_restore.shape[1]} < K={K} visible tokens")
    token_D = mask_token.reshape(D)
    out = _unshuffle_op(x_visible, token_D, ids_restore)
    return out
