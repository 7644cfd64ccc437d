"""The short conv of spec section 2.4 on a *compact* (packed) layout: one flat axis of rows cut
into contiguous segments, each with its own weight group.

This is what the routed MoSSE uses in training: its dispatched rows are sorted by expert and,
inside an expert, by (batch row, time), so every (expert, batch row) pair is one contiguous
segment holding exactly that expert's subsequence of that row. A causal depthwise conv per
segment, with the segment's expert's taps, is then the routed conv of
:func:`~mossnet.ops.conv.routed_causal_conv` without the dense (batch, T, E, C) buffer.

No host synchronisation, fixed shapes: the segment of each row is counted on the device
(:func:`~mossnet.ops.segments.segment_ids`), and a tap that would reach across a segment start
is masked to zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..segments import segment_positions


# Backward of gather_rows: lanes per group that the gradient rows are spread over before the
# final sum (a plain index_add would pile all M/G rows of a group onto one address).
_SPREAD = 64


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.n_groups = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        acc_dtype = torch.promote_types(grad.dtype, torch.float32)
        lane = torch.arange(index.numel(), device=index.device) % _SPREAD
        acc = torch.zeros(ctx.n_groups * _SPREAD, *grad.shape[1:], dtype=acc_dtype, device=grad.device)
        acc.index_add_(0, index * _SPREAD + lane, grad.to(acc_dtype))
        return acc.view(ctx.n_groups, _SPREAD, *grad.shape[1:]).sum(1).to(grad.dtype), None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.index_select(0, index)``, with a backward made for few groups and many rows.

    The gradient of a gather is a scatter-add; when M rows fall on G << M table rows (the
    per-expert parameters of the MoSSE's rows: G = E), one ``index_add`` makes M/G atomic adds
    contend for every address. Here each group's rows are first summed into ``_SPREAD``
    separate lanes, then the lanes are summed. Same result up to float summation order.

    Args:
        table: (G, ...) per-group values. index: (M,) int64 in [0, G).
    Returns:
        (M, ...) rows of ``table``.

    Example:
        >>> table = torch.randn(3, 2, requires_grad=True)
        >>> rows = gather_rows(table, torch.tensor([0, 0, 2, 2, 2]))
        >>> rows.sum().backward(); table.grad[:, 0].tolist()
        [2.0, 0.0, 3.0]
    """
    return _GatherRows.apply(table, index)


def segment_causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> torch.Tensor:
    """Causal depthwise conv along the rows of each segment, each row with its group's taps.

    ``out[i] = bias[g] + sum_{j=0}^{K-1} weight[g, :, K-1-j] * x[i-j]`` with ``g = group[i]``,
    where a term is dropped when row ``i-j`` lies before the start of row i's segment (every
    segment starts from a zero window, like ``F.conv1d`` with K-1 zeros of left padding).

    Args:
        x: (M, C) rows, segments laid out one after the other.
        weight: (G, C, K) taps per group; tap K-1 multiplies the current row.
        bias: (G, C) or None.
        group: (M,) int64 in [0, G): which weight each row uses (constant inside a segment in
            the MoSSE, but this op does not need that).
        cu_seqlens: (S+1,) int32/int64 segment boundaries: 0 = cu[0] <= ... <= cu[S] = M
            (empty segments allowed).
    Returns:
        (M, C) in the promoted dtype of x and weight.

    Example:
        >>> x = torch.randn(7, 3); w = torch.randn(2, 3, 4); b = torch.randn(2, 3)
        >>> group = torch.tensor([0, 0, 0, 1, 1, 1, 1])
        >>> cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)  # the middle segment is empty
        >>> out = segment_causal_conv(x, w, b, group, cu)
        >>> out.shape
        torch.Size([7, 3])
        >>> ref = F.conv1d(F.pad(x[3:].T, (3, 0))[None], w[1][:, None, :], b[1], groups=3)[0].T
        >>> torch.allclose(out[3:], ref, atol=1e-6)
        True
    """
    M, C = x.shape
    G, _, K = weight.shape
    if M == 0:
        return x.new_zeros(0, C, dtype=torch.promote_types(x.dtype, weight.dtype))
    # Every row's taps (and bias) in one gather: (M, C*K [+ C]).
    table = weight.reshape(G, C * K) if bias is None else torch.cat([weight.reshape(G, C * K), bias], dim=1)
    per_row = gather_rows(table, group)
    taps = per_row[:, : C * K].view(M, C, K)
    # Window of row i: rows i-K+1 .. i (zeros before row 0); tap t reaches back K-1-t rows and
    # is dropped where that crosses the start of row i's segment.
    windows = F.pad(x, (0, 0, K - 1, 0)).unfold(0, K, 1)  # (M, C, K), a view
    keep = taps_inside_segment(cu_seqlens.to(x.device), M, K).to(taps.dtype)  # (M, K)
    out = (windows * (taps * keep[:, None, :])).sum(-1)
    if bias is not None:
        out = out + per_row[:, C * K :]
    return out


@torch.compiler.disable
def taps_inside_segment(cu_seqlens: torch.Tensor, M: int, K: int) -> torch.Tensor:
    """(M, K) bool: tap t of row i (which reads row i-K+1+t) stays inside row i's segment.

    A row's position inside its segment says how many taps reach back without leaving it.
    Kept out of ``torch.compile`` graphs (a graph break, then the mask enters the graph as an
    input): with torch 2.13, Inductor's CPU code for this integer bookkeeping, recomputed in the
    backward graph, corrupted the heap on more than one thread (``tests/ops/test_segments.py``).
    """
    _, pos = segment_positions(cu_seqlens, M)  # (M,)
    reach = torch.arange(K - 1, -1, -1, device=pos.device)  # (K,)
    return pos[:, None] >= reach[None, :]


def segment_causal_conv_reference(x, weight, bias, group, cu_seqlens):
    """The obvious version: ``F.conv1d`` on each segment alone (the segment's first row's
    group). Slow, host-synchronising; for tests."""
    out = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    K = weight.shape[-1]
    bounds = cu_seqlens.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            continue
        g = int(group[lo])
        seq = F.pad(x[lo:hi].T.to(out.dtype), (K - 1, 0))[None]  # (1, C, K-1 + len)
        b = None if bias is None else bias[g].to(out.dtype)
        out[lo:hi] = F.conv1d(seq, weight[g].to(out.dtype)[:, None, :], b, groups=x.shape[1])[0].T
    return out
