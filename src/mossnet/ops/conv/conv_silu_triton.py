"""The MoSSE's segment conv and the SiLU after it, in Triton: one launch forward, three backward.

    out[i] = SiLU(bias[g] + sum_k weight[g, :, k] * x[i - (K-1) + k]),   g = group[i],

where a row before the start of row i's segment reads that segment's carried window (zeros
without one: training, and the first chunk of a prompt). In PyTorch
(:func:`~.segment_conv.segment_causal_conv`, then ``F.silu``) the rows are first copied into a
buffer with K-1 window rows before every segment, and each tap is a gather of rows and of per-row
weights: about 3K + 4 launches forward, each reading and writing (M, C) tensors, and 6K + 5
backward. Here each program reads its rows' windows straight from x and the carried windows
(the segment start says where one ends and the other begins) and writes the activated output;
nothing of (M, C) is saved but x. The final windows, when asked for, are one small gather
(:func:`final_windows`).

Backward, from the output gradient (no gradient flows into carried windows; the dispatcher
sends a window that needs one to the reference):
1. ``_grad_pre_kernel``: recomputes the conv, gives d_pre = d_out * SiLU'(pre) (stored, (M, C)
   fp32: every row's dx needs its K-1 successors' d_pre), and the block's share of the bias
   and weight gradients, summed over its rows per group, then added atomically into (G, C[, K])
   fp32 buffers. Rows are sorted by group, so a block spans few groups (a loop over them).
2. ``_grad_x_kernel``: dx[j] = sum_k weight[g_j, :, k] * d_pre[j + K-1-k] over the successors in
   j's segment.

Reference: the PyTorch composition above; ``tests/ops/test_conv_silu.py`` compares the output,
the final windows and every gradient. Summation order of the weight gradient depends on the
schedule (atomics), as the reference's ``index_add`` does on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..function_call import apply_function
from ..launch_grid import cdiv, next_power_of_2

BLOCK_M = 32
BLOCK_C = 64
MAX_TAPS = 8  # K is unrolled in the kernels


@triton.jit
def _tap(x_ptr, win_ptr, rows, cols, row_ok, col_ok, seg, start, C, sx, k, K: tl.constexpr,
         HAS_WINDOW: tl.constexpr):
    """(BLOCK_M, BLOCK_C) fp32: what tap k of each row reads, x[row - (K-1-k)] inside the row's
    segment and, before its start, the segment's carried window (zeros without one)."""
    src = rows - (K - 1 - k)
    inside = row_ok & (src >= start)
    v = tl.load(x_ptr + src[:, None] * sx + cols[None, :], mask=inside[:, None] & col_ok[None, :],
                other=0.0).to(tl.float32)
    if HAS_WINDOW:  # window row (position in segment) + k: the concatenation window || segment
        before = row_ok & (src < start)
        w_row = rows - start + k
        v += tl.load(win_ptr + (seg[:, None] * (K - 1) + w_row[:, None]) * C + cols[None, :],
                     mask=before[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _conv_tile(x_ptr, win_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, g, seg, start, C, sx,
               K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_C: tl.constexpr):
    """pre (BLOCK_M, BLOCK_C) fp32: the conv of the tile's rows."""
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc = tl.load(b_ptr + g[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for k in tl.static_range(K):
        v = _tap(x_ptr, win_ptr, rows, cols, row_ok, col_ok, seg, start, C, sx, k, K, HAS_WINDOW)
        w = tl.load(w_ptr + (g[:, None] * C + cols[None, :]) * K + k, mask=mask, other=0.0).to(tl.float32)
        acc += v * w
    return acc


@triton.jit
def _tile_rows(pid_m, pid_c, seg_ptr, cu_ptr, group_ptr, M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < M
    col_ok = cols < C
    seg = tl.load(seg_ptr + rows, mask=row_ok, other=0)
    start = tl.load(cu_ptr + seg, mask=row_ok, other=0)
    end = tl.load(cu_ptr + seg + 1, mask=row_ok, other=0)
    g = tl.load(group_ptr + rows, mask=row_ok, other=0)
    return rows, cols, row_ok, col_ok, seg, start, end, g


@triton.jit
def conv_silu_fwd_kernel(x_ptr, win_ptr, w_ptr, b_ptr, seg_ptr, cu_ptr, group_ptr, out_ptr, M, C, sx,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, row_ok, col_ok, seg, start, _, g = _tile_rows(tl.program_id(0), tl.program_id(1), seg_ptr,
                                                              cu_ptr, group_ptr, M, C, BLOCK_M, BLOCK_C)
    pre = _conv_tile(x_ptr, win_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, g, seg, start, C, sx, K, HAS_BIAS,
                     HAS_WINDOW, BLOCK_M, BLOCK_C)
    out = pre * tl.sigmoid(pre)
    tl.store(out_ptr + rows[:, None] * C + cols[None, :], out, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_pre_kernel(x_ptr, win_ptr, w_ptr, b_ptr, seg_ptr, cu_ptr, group_ptr, dout_ptr, dpre_ptr, dw_ptr, db_ptr,
                     M, C, sx, K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, row_ok, col_ok, seg, start, _, g = _tile_rows(tl.program_id(0), tl.program_id(1), seg_ptr,
                                                              cu_ptr, group_ptr, M, C, BLOCK_M, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]
    pre = _conv_tile(x_ptr, win_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, g, seg, start, C, sx, K, HAS_BIAS,
                     HAS_WINDOW, BLOCK_M, BLOCK_C)
    sig = tl.sigmoid(pre)
    dout = tl.load(dout_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dpre = dout * sig * (1.0 + pre * (1.0 - sig))
    dpre = tl.where(mask, dpre, 0.0)
    tl.store(dpre_ptr + rows[:, None] * C + cols[None, :], dpre, mask=mask)
    # The block's rows are sorted by group: sum them per group present, one atomic add per group.
    g_lo = tl.min(tl.where(row_ok, g, 2147483647), axis=0)
    g_hi = tl.max(tl.where(row_ok, g, -1), axis=0)
    for gg in range(g_lo, g_hi + 1):
        mine = (g == gg) & row_ok
        d_mine = tl.where(mine[:, None], dpre, 0.0)
        if HAS_BIAS:
            tl.atomic_add(db_ptr + gg * C + cols, tl.sum(d_mine, axis=0), mask=col_ok)
        for k in tl.static_range(K):
            v = _tap(x_ptr, win_ptr, rows, cols, mine, col_ok, seg, start, C, sx, k, K, HAS_WINDOW)
            tl.atomic_add(dw_ptr + (gg * C + cols) * K + k, tl.sum(d_mine * v, axis=0), mask=col_ok)


@triton.jit
def _grad_x_kernel(w_ptr, seg_ptr, cu_ptr, group_ptr, dpre_ptr, dx_ptr, M, C,
                   K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, cols, row_ok, col_ok, _, _, end, g = _tile_rows(tl.program_id(0), tl.program_id(1), seg_ptr, cu_ptr,
                                                          group_ptr, M, C, BLOCK_M, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for k in tl.static_range(K):
        dst = rows + (K - 1 - k)  # the output row that reads this row through tap k
        ok = row_ok & (dst < end)
        d = tl.load(dpre_ptr + dst[:, None] * C + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)
        w = tl.load(w_ptr + (g[:, None] * C + cols[None, :]) * K + k, mask=mask, other=0.0).to(tl.float32)
        acc += d * w
    tl.store(dx_ptr + rows[:, None] * C + cols[None, :], acc, mask=mask)


def _grid(M: int, C: int):
    return (cdiv(M, BLOCK_M), cdiv(C, BLOCK_C))


class ConvSiLUTriton(torch.autograd.Function):
    """out = SiLU(segment conv of x); see the module docstring. The carried windows get no gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, group, cu_seqlens, segment, window):
        M, C = x.shape
        K = weight.shape[-1]
        x = x if x.stride(1) == 1 else x.contiguous()
        w = weight.contiguous()
        b = bias.contiguous() if bias is not None else w
        win = window.to(x.dtype).contiguous() if window is not None else x
        cu = cu_seqlens.to(torch.int64).contiguous()
        seg, grp = segment.contiguous(), group.contiguous()
        out = torch.empty(M, C, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        flags = dict(K=K, HAS_BIAS=bias is not None, HAS_WINDOW=window is not None, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C)
        if M:
            conv_silu_fwd_kernel[_grid(M, C)](x, win, w, b, seg, cu, grp, out, M, C, x.stride(0), **flags)
        ctx.save_for_backward(x, win, w, b, seg, cu, grp)
        ctx.flags = flags
        ctx.dtypes = (x.dtype, weight.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        x, win, w, b, seg, cu, grp = ctx.saved_tensors
        M, C = x.shape
        G, _, K = w.shape
        dout = dout.contiguous()
        dpre = torch.empty(M, C, dtype=torch.float32, device=x.device)
        dw = torch.zeros(G, C, K, dtype=torch.float32, device=x.device)
        db = torch.zeros(G, C, dtype=torch.float32, device=x.device)
        dx = torch.empty(M, C, dtype=torch.float32, device=x.device)
        if M:
            _grad_pre_kernel[_grid(M, C)](x, win, w, b, seg, cu, grp, dout, dpre, dw, db, M, C, x.stride(0),
                                          **ctx.flags)
            _grad_x_kernel[_grid(M, C)](w, seg, cu, grp, dpre, dx, M, C, K=K, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C)
        x_dtype, w_dtype = ctx.dtypes
        db = db.to(w_dtype) if ctx.flags["HAS_BIAS"] else None
        return dx.to(x_dtype), dw.to(w_dtype), db, None, None, None, None


@triton.jit
def final_windows_kernel(x_ptr, win_ptr, cu_ptr, out_ptr, C, sx, K: tl.constexpr, HAS_WINDOW: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """One program per (segment, block of channels): the segment's last K-1 inputs of
    ``window || segment``, each read from x or from the carried window (zeros without one).
    The window is in x's dtype."""
    s = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    start = tl.load(cu_ptr + s).to(tl.int64)
    length = tl.load(cu_ptr + s + 1).to(tl.int64) - start
    for j in tl.static_range(K - 1):
        at = length + j  # position in window || segment
        from_rows = at >= K - 1
        v = tl.load(x_ptr + (start + at - (K - 1)) * sx + cols, mask=col_ok & from_rows, other=0.0)
        if HAS_WINDOW:
            carried = tl.load(win_ptr + (s * (K - 1) + tl.minimum(at, K - 2)) * C + cols,
                              mask=col_ok & (at < K - 1), other=0.0)
            v = tl.where(from_rows, v, carried)
        tl.store(out_ptr + (s * (K - 1) + j) * C + cols, v, mask=col_ok)


def final_windows(x: torch.Tensor, cu_seqlens: torch.Tensor, window: torch.Tensor | None, K: int) -> torch.Tensor:
    """(S, K-1, C) each segment's last K-1 inputs of ``window || segment`` (a short or empty
    segment passes the tail of its window on), in x's dtype. x (M, C) with unit column stride;
    window (S, K-1, C) or None.

    One launch (:func:`final_windows_kernel`) when no gradient is asked of it (a prefill filling
    the generation cache); otherwise :func:`final_windows_reference`, a dozen differentiable ops."""
    S, C = cu_seqlens.numel() - 1, x.shape[1]
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or (window is not None and window.requires_grad))
    if wants_grad or K < 2 or S == 0 or x.stride(1) != 1:
        return final_windows_reference(x, cu_seqlens, window, K)
    out = torch.empty(S, K - 1, C, dtype=x.dtype, device=x.device)
    # The window is cast on the host: the same rounding as the reference's on every backend.
    win = window.to(x.dtype).contiguous() if window is not None else out  # out: an unread stand-in
    block_c = min(next_power_of_2(C), 128)
    final_windows_kernel[(S, cdiv(C, block_c))](x, win, cu_seqlens, out, C, x.stride(0), K=K,
                                                HAS_WINDOW=window is not None, BLOCK_C=block_c)
    return out


def final_windows_reference(x: torch.Tensor, cu_seqlens: torch.Tensor, window: torch.Tensor | None,
                            K: int) -> torch.Tensor:
    """:func:`final_windows` in PyTorch ops (differentiable in x and the window)."""
    cu = cu_seqlens.to(torch.long)
    S, C = cu.numel() - 1, x.shape[1]
    length = (cu[1:] - cu[:-1])[:, None]  # (S, 1)
    j = torch.arange(K - 1, device=x.device)[None, :]
    at = length + j  # index into window || segment
    from_rows = at >= K - 1
    rows = x.index_select(0, (cu[:-1, None] + at - (K - 1)).clamp(0, max(x.shape[0] - 1, 0)).reshape(-1)) \
        if x.shape[0] else x.new_zeros(S * (K - 1), C)
    rows = rows.view(S, K - 1, C)
    if window is None:
        return torch.where(from_rows[..., None], rows, torch.zeros((), dtype=x.dtype, device=x.device))
    carried = window.to(x.dtype).gather(1, at.clamp(max=K - 2)[..., None].expand(-1, -1, C))
    return torch.where(from_rows[..., None], rows, carried)


def conv_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: torch.Tensor,
                     cu_seqlens: torch.Tensor, segment: torch.Tensor, initial_window: torch.Tensor | None = None,
                     output_final_window: bool = False):
    """SiLU of :func:`~.segment_conv.segment_causal_conv`, fused, and the final windows.

    x: (M, C) rows with unit column stride; weight (G, C, K), K <= MAX_TAPS; bias (G, C) or None;
    group, segment: (M,) int64; cu_seqlens: (S+1,); initial_window (S, K-1, C) or None (no
    gradient flows into it). Returns (M, C) in the promoted dtype, and the final windows (S, K-1,
    C) in x's dtype or None."""
    out = apply_function(ConvSiLUTriton, x, weight, bias, group, cu_seqlens, segment, initial_window)
    final = final_windows(x, cu_seqlens, initial_window, weight.shape[-1]) if output_final_window else None
    return out, final
