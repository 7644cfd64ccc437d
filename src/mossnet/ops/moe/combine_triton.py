"""The expert combine and the token gather in one Triton kernel each way (references and
contracts: :func:`mossnet.ops.moe.combine.combine_reference`,
:func:`mossnet.ops.moe.combine.gather_token_rows_reference`).

    out[t] = sum_j gates[t, j] * rows[position[t * k + j]]

``position`` inverts the dispatch's sort (``slot``): it says where assignment (t, j) landed
among the expert-sorted rows. With it, each program gathers its tokens' k rows, so the forward is
one pass with no zero fill and no atomics, where PyTorch takes a gate gather, a cast, a product,
a zero fill and an atomic scatter-add. The backward is one pass too: it writes each assignment's
row gradient, gates[t, j] * d_out[t], and reduces the gate gradient <row, d_out[t]> in fp32.

The token gather (rows[p] = u[token[p]], cast to the products' dtype) is the combine's transpose
with unit gates: its backward is the combine's forward kernel without gates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..function_call import apply_function
from ..launch_grid import cdiv

BLOCK_T = 16
BLOCK_D = 128


@triton.jit
def combine_fwd_kernel(rows_ptr, gates_ptr, pos_ptr, out_ptr, n, D, K: tl.constexpr, HAS_GATES: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    tok_ok = tok < n
    mask = tok_ok[:, None] & (cols < D)[None, :]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for j in tl.static_range(K):
        at = tok.to(tl.int64) * K + j
        p = tl.load(pos_ptr + at, mask=tok_ok, other=0).to(tl.int64)
        row = tl.load(rows_ptr + p[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_GATES:
            row *= tl.load(gates_ptr + at, mask=tok_ok, other=0.0).to(tl.float32)[:, None]
        acc += row
    tl.store(out_ptr + tok[:, None].to(tl.int64) * D + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def combine_bwd_kernel(rows_ptr, gates_ptr, pos_ptr, dout_ptr, drows_ptr, dgates_ptr, n, D, K: tl.constexpr,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tok_ok = tok < n
    for j in tl.static_range(K):
        at = tok.to(tl.int64) * K + j
        p = tl.load(pos_ptr + at, mask=tok_ok, other=0).to(tl.int64)
        g = tl.load(gates_ptr + at, mask=tok_ok, other=0.0).to(tl.float32)
        dg = tl.zeros([BLOCK_T], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = tok_ok[:, None] & (cols < D)[None, :]
            dout = tl.load(dout_ptr + tok[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0.0)
            dout = dout.to(tl.float32)
            row = tl.load(rows_ptr + p[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            dg += tl.sum(dout * row, axis=1)
            tl.store(drows_ptr + p[:, None] * D + cols[None, :], (g[:, None] * dout).to(drows_ptr.dtype.element_ty),
                     mask=mask)
        tl.store(dgates_ptr + at, dg.to(dgates_ptr.dtype.element_ty), mask=tok_ok)


class CombineTriton(torch.autograd.Function):
    """out (n, D) = combine(rows (n*k, D), gates (n, k), position (n*k,)); see the module docstring."""

    @staticmethod
    def forward(ctx, rows, gates, position):
        rows, gates = rows.contiguous(), gates.contiguous()
        n, k = gates.shape
        D = rows.shape[1]
        out = rows.new_empty(n, D)
        if n and D:
            grid = (cdiv(n, BLOCK_T), cdiv(D, BLOCK_D))
            combine_fwd_kernel[grid](rows, gates, position, out, n, D, K=k, HAS_GATES=True,
                                     BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
        ctx.save_for_backward(rows, gates, position)
        return out

    @staticmethod
    def backward(ctx, dout):
        rows, gates, position = ctx.saved_tensors
        n, k = gates.shape
        D = rows.shape[1]
        drows = torch.empty_like(rows)  # every row is some assignment's: all are written
        dgates = torch.empty_like(gates)
        if n and D:
            combine_bwd_kernel[(cdiv(n, BLOCK_T),)](rows, gates, position, dout.contiguous(), drows, dgates,
                                                    n, D, K=k, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
        return drows, dgates, None


def combine_triton(rows: torch.Tensor, gates: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """The fused combine: rows (n*k, D) in dispatch order, gates (n, k), the dispatch's
    ``position`` (n*k,) (flattened assignment -> sorted row). Returns (n, D) in rows' dtype."""
    return apply_function(CombineTriton, rows, gates, position)


@triton.jit
def gather_fwd_kernel(u_ptr, token_ptr, rows_ptr, M, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < M
    mask = r_ok[:, None] & (cols < D)[None, :]
    t = tl.load(token_ptr + r, mask=r_ok, other=0).to(tl.int64)
    row = tl.load(u_ptr + t[:, None] * D + cols[None, :], mask=mask, other=0.0)
    tl.store(rows_ptr + r[:, None].to(tl.int64) * D + cols[None, :], row.to(rows_ptr.dtype.element_ty), mask=mask)


class GatherTokenRowsTriton(torch.autograd.Function):
    """rows (n*k, D) = u[token].to(dtype); the backward sums each token's k row gradients."""

    @staticmethod
    def forward(ctx, u, token, position, dtype):
        u = u.contiguous()
        n, D = u.shape
        M = token.numel()
        rows = torch.empty(M, D, dtype=dtype, device=u.device)
        if M and D:
            grid = (cdiv(M, BLOCK_T), cdiv(D, BLOCK_D))
            gather_fwd_kernel[grid](u, token, rows, M, D, BLOCK_M=BLOCK_T, BLOCK_D=BLOCK_D)
        ctx.save_for_backward(position)
        ctx.n, ctx.u_dtype = n, u.dtype
        return rows

    @staticmethod
    def backward(ctx, drows):
        (position,) = ctx.saved_tensors
        n, D = ctx.n, drows.shape[1]
        k = position.numel() // max(n, 1)
        du = torch.empty(n, D, dtype=ctx.u_dtype, device=drows.device)
        if n and D:
            grid = (cdiv(n, BLOCK_T), cdiv(D, BLOCK_D))
            combine_fwd_kernel[grid](drows.contiguous(), drows, position, du, n, D, K=k, HAS_GATES=False,
                                     BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
        return du, None, None, None


def gather_token_rows_triton(u: torch.Tensor, token: torch.Tensor, position: torch.Tensor,
                             dtype: torch.dtype) -> torch.Tensor:
    """The fused gather: u (n, D), the dispatch's token and position (n*k,), the products'
    dtype. Returns (n*k, D) in ``dtype``. Every token has exactly k rows (dropless dispatch)."""
    return apply_function(GatherTokenRowsTriton, u, token, position, dtype)
