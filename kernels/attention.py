"""Fused non-causal attention (flash-attention style) as Triton kernels and a torch op.

Shape legend: B batch, H heads, N tokens, D head dim; kernels see q/k/v as (B*H, N, D).

Forward: one program per (query block, batch*head) streams over key blocks with an online
softmax in float32 and saves the log-sum-exp. Backward: Delta = rowsum(dO * O), then one pass
per key block for dK/dV and one per query block for dQ, so every output element is written by
exactly one program: no atomics, and reruns are bitwise equal.
Blocks suit short ViT sequences (17-401 tokens): a sequence of up to 64 tokens is one tile.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._backend import HAS_TRITON, active_backend, autotuning

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

if HAS_TRITON:
    import triton
    import triton.language as tl

    def _even_n(args) -> bool:
        # The fast path: no bounds masks when N is a multiple of both block sizes.
        return args["N"] % args["BLOCK_M"] == 0 and args["N"] % args["BLOCK_N"] == 0

    def _useful_blocks(configs, named_args, **kwargs):
        # Blocks longer than the sequence (rounded up to a power of two) only add masked rows:
        # at N = 17 or 65 most configs are such, and each costs a compile.
        n = named_args.get("N") if isinstance(named_args, dict) else None
        if n is None:
            return configs
        longest = max(16, triton.next_power_of_2(n))
        kept = [c for c in configs if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= longest]
        return kept or configs

    def _tuned(kernel):
        """Autotune block sizes on a GPU; the interpreter cannot time configs, so it gets one
        (picked by the launcher), as does LENSPERF_AUTOTUNE=0."""
        kernel = triton.heuristics({"EVEN_N": _even_n})(kernel)
        if not autotuning():
            return kernel
        configs = [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn in ((32, 32), (64, 32), (64, 64), (128, 64))
            for w in (4, 8)
            for s in (2, 3)
        ]
        return triton.autotune(
            configs, key=["N", "HEAD_DIM"], prune_configs_by={"early_config_prune": _useful_blocks}
        )(kernel)

    @triton.jit
    def _load_rows(ptr, offs, N, HEAD_DIM: tl.constexpr, EVEN_N: tl.constexpr):
        """Rows `offs` of an (N, HEAD_DIM) matrix at ptr; rows past N read as zeros."""
        ptrs = ptr + offs[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        if EVEN_N:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=offs[:, None] < N, other=0.0)

    @_tuned
    @triton.jit
    def _attn_fwd_kernel(
        Q_ptr, K_ptr, V_ptr,  # (B*H, N, HEAD_DIM) each, contiguous
        O_ptr,  # (B*H, N, HEAD_DIM)
        LSE_ptr,  # (B*H, N) float32, natural-log log-sum-exp of the scaled scores
        qk_scale,  # softmax scale * log2(e): the kernel works in base 2
        N,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        EVEN_N: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1).to(tl.int64)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, HEAD_DIM)
        base = bh * N * HEAD_DIM
        q = _load_rows(Q_ptr + base, offs_m, N, HEAD_DIM, EVEN_N)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_rows(K_ptr + base, offs_n, N, HEAD_DIM, EVEN_N)
            v = _load_rows(V_ptr + base, offs_n, N, HEAD_DIM, EVEN_N)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
            if not EVEN_N:
                s = tl.where(offs_n[None, :] < N, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m_i = m_new
        acc = acc / l_i[:, None]
        out_ptrs = O_ptr + base + offs_m[:, None] * HEAD_DIM + d[None, :]
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
        if EVEN_N:
            tl.store(out_ptrs, acc.to(O_ptr.dtype.element_ty))
            tl.store(LSE_ptr + bh * N + offs_m, lse)
        else:
            tl.store(out_ptrs, acc.to(O_ptr.dtype.element_ty), mask=offs_m[:, None] < N)
            tl.store(LSE_ptr + bh * N + offs_m, lse, mask=offs_m < N)

    @triton.jit
    def _attn_bwd_delta_kernel(
        O_ptr, DO_ptr,  # (B*H*N, HEAD_DIM) each
        DELTA_ptr,  # (B*H*N,) float32: rowsum(dO * O)
        rows,
        HEAD_DIM: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        d = tl.arange(0, HEAD_DIM)
        ok = offs[:, None] < rows
        o = tl.load(O_ptr + offs[:, None] * HEAD_DIM + d[None, :], mask=ok, other=0.0)
        do = tl.load(DO_ptr + offs[:, None] * HEAD_DIM + d[None, :], mask=ok, other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA_ptr + offs, delta, mask=offs < rows)

    @triton.jit
    def _probs_and_dscores(q, k, v, do, lse2, delta, offs_m, offs_n, N, qk_scale,
                           EVEN_N: tl.constexpr):  # fmt: skip
        """Recomputed softmax P (BLOCK_M, BLOCK_N) and dS = P * (dO V^T - Delta), float32;
        both zero outside the N x N scores."""
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        p = tl.exp2(s - lse2[:, None])
        if not EVEN_N:
            p = tl.where((offs_m[:, None] < N) & (offs_n[None, :] < N), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        return p, p * (dp - delta[:, None])

    @_tuned
    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q_ptr, K_ptr, V_ptr, DO_ptr,  # (B*H, N, HEAD_DIM) each
        LSE_ptr, DELTA_ptr,  # (B*H, N) float32
        DK_ptr, DV_ptr,  # (B*H, N, HEAD_DIM)
        scale,
        qk_scale,
        N,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        EVEN_N: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1).to(tl.int64)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        d = tl.arange(0, HEAD_DIM)
        base = bh * N * HEAD_DIM
        k = _load_rows(K_ptr + base, offs_n, N, HEAD_DIM, EVEN_N)
        v = _load_rows(V_ptr + base, offs_n, N, HEAD_DIM, EVEN_N)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        for start_m in range(0, N, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q = _load_rows(Q_ptr + base, offs_m, N, HEAD_DIM, EVEN_N)
            do = _load_rows(DO_ptr + base, offs_m, N, HEAD_DIM, EVEN_N)
            m_ok = offs_m < N
            lse2 = tl.load(LSE_ptr + bh * N + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA_ptr + bh * N + offs_m, mask=m_ok, other=0.0)
            p, ds = _probs_and_dscores(
                q, k, v, do, lse2, delta, offs_m, offs_n, N, qk_scale, EVEN_N
            )
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")
        ptrs = base + offs_n[:, None] * HEAD_DIM + d[None, :]
        if EVEN_N:
            tl.store(DK_ptr + ptrs, (dk * scale).to(DK_ptr.dtype.element_ty))
            tl.store(DV_ptr + ptrs, dv.to(DV_ptr.dtype.element_ty))
        else:
            n_ok = offs_n[:, None] < N
            tl.store(DK_ptr + ptrs, (dk * scale).to(DK_ptr.dtype.element_ty), mask=n_ok)
            tl.store(DV_ptr + ptrs, dv.to(DV_ptr.dtype.element_ty), mask=n_ok)

    @_tuned
    @triton.jit
    def _attn_bwd_dq_kernel(
        Q_ptr, K_ptr, V_ptr, DO_ptr,  # (B*H, N, HEAD_DIM) each
        LSE_ptr, DELTA_ptr,  # (B*H, N) float32
        DQ_ptr,  # (B*H, N, HEAD_DIM)
        scale,
        qk_scale,
        N,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        EVEN_N: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1).to(tl.int64)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, HEAD_DIM)
        base = bh * N * HEAD_DIM
        m_ok = offs_m < N
        q = _load_rows(Q_ptr + base, offs_m, N, HEAD_DIM, EVEN_N)
        do = _load_rows(DO_ptr + base, offs_m, N, HEAD_DIM, EVEN_N)
        lse2 = tl.load(LSE_ptr + bh * N + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA_ptr + bh * N + offs_m, mask=m_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_rows(K_ptr + base, offs_n, N, HEAD_DIM, EVEN_N)
            v = _load_rows(V_ptr + base, offs_n, N, HEAD_DIM, EVEN_N)
            _, ds = _probs_and_dscores(
                q, k, v, do, lse2, delta, offs_m, offs_n, N, qk_scale, EVEN_N
            )
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
        ptrs = DQ_ptr + base + offs_m[:, None] * HEAD_DIM + d[None, :]
        if EVEN_N:
            tl.store(ptrs, (dq * scale).to(DQ_ptr.dtype.element_ty))
        else:
            tl.store(ptrs, (dq * scale).to(DQ_ptr.dtype.element_ty), mask=m_ok[:, None])


# ---------------------------------------------------------------- launchers


def _interpreter_blocks(N: int) -> dict:
    # One tile covers sequences up to 64 tokens; tl.dot on GPUs needs every block >= 16.
    block = min(64, max(16, triton.next_power_of_2(N)))
    return {"BLOCK_M": block, "BLOCK_N": block}


def _launch(kernel, grid_rows: int, bh: int, N: int, *args, **constexprs):
    """Launch with autotuned blocks on a GPU, or the interpreter's single config."""
    if autotuning():

        def grid(meta):
            return (triton.cdiv(N, meta[grid_rows]), bh)

        kernel[grid](*args, **constexprs)
    else:
        blocks = _interpreter_blocks(N)
        kernel[(triton.cdiv(N, blocks[grid_rows]), bh)](*args, **constexprs, **blocks)


def _flat(t: Tensor) -> Tensor:
    B, H, N, D = t.shape
    return t.contiguous().view(B * H, N, D)


def _attention_fwd_triton(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    B, H, N, D = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    _launch(
        _attn_fwd_kernel, "BLOCK_M", B * H, N,
        _flat(q), _flat(k), _flat(v), out.view(B * H, N, D), lse, scale * LOG2E, N,
        HEAD_DIM=D,
    )  # fmt: skip
    return out, lse


def _attention_bwd_triton(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    B, H, N, D = q.shape
    q_, k_, v_, do_ = _flat(q), _flat(k), _flat(v), _flat(do)
    delta = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    rows = B * H * N
    _attn_bwd_delta_kernel[(triton.cdiv(rows, 64),)](
        _flat(out), do_, delta, rows, HEAD_DIM=D, BLOCK=64
    )
    dq, dk, dv = (torch.empty(B * H, N, D, dtype=q.dtype, device=q.device) for _ in range(3))
    common = (q_, k_, v_, do_, lse, delta)
    _launch(
        _attn_bwd_dkdv_kernel,
        "BLOCK_N",
        B * H,
        N,
        *common,
        dk,
        dv,
        scale,
        scale * LOG2E,
        N,
        HEAD_DIM=D,
    )
    _launch(
        _attn_bwd_dq_kernel, "BLOCK_M", B * H, N, *common, dq, scale, scale * LOG2E, N, HEAD_DIM=D
    )
    return dq.view(B, H, N, D), dk.view(B, H, N, D), dv.view(B, H, N, D)


# ---------------------------------------------------------------- torch references


def attention_reference(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(out, lse) by the textbook formula, accumulated in float32 (or float64 for float64)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v.to(acc))
    return out.to(q.dtype), lse.float()


def attention_backward_reference(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    acc = torch.promote_types(q.dtype, torch.float32)
    q_, k_, v_, do_ = q.to(acc), k.to(acc), v.to(acc), do.to(acc)
    p = torch.exp(torch.matmul(q_, k_.transpose(-1, -2)) * scale - lse.to(acc).unsqueeze(-1))
    dv = torch.matmul(p.transpose(-1, -2), do_)
    dp = torch.matmul(do_, v_.transpose(-1, -2))
    delta = (do_ * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, k_) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q_) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# ---------------------------------------------------------------- custom ops


@torch.library.custom_op("lensperf_kernels::attention_fwd", mutates_args=())
def _attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    if active_backend(q) == "triton":
        return _attention_fwd_triton(q, k, v, scale)
    return attention_reference(q, k, v, scale)


@_attention_fwd_op.register_fake
def _(q, k, v, scale):
    B, H, N, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        B, H, N, dtype=torch.float32
    )


@torch.library.custom_op("lensperf_kernels::attention_bwd", mutates_args=())
def _attention_bwd_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    if active_backend(q) == "triton":
        return _attention_bwd_triton(do, q, k, v, out, lse, scale)
    return attention_backward_reference(do, q, k, v, out, lse, scale)


@_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _attention_setup(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(grad_out.contiguous(), q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


torch.library.register_autograd(
    "lensperf_kernels::attention_fwd", _attention_backward, setup_context=_attention_setup
)


# ---------------------------------------------------------------- public API


def _validate(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be (B, H, N, D), got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[-1]} is not supported {SUPPORTED_HEAD_DIMS}")
    if q.shape[2] < 1:
        raise ValueError("attention needs at least one token (N >= 1)")


def attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """softmax(q k^T * scale) v over all N keys (non-causal); q, k, v (B, H, N, D).

    scale defaults to 1 / sqrt(D). D in {16, 32, 64, 128}; float32, float16 or bfloat16, with
    float32 accumulation. Differentiable with respect to q, k and v.
    """
    _validate(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return _attention_fwd_op(q, k, v, float(scale))[0]
