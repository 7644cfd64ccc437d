"""The short conv of spec section 2.4 on a compact (packed) layout: one flat axis of rows cut
into contiguous segments, each row with its own weight group.

The MoSSE sorts its rows by expert and, inside an expert, by (batch row, document, time), so
every segment holds exactly one expert's subsequence of one document: a causal depthwise conv
per segment, with that expert's taps, is the routed conv. A segment may start from a carried
window (the K-1 inputs its expert saw before, from the generation cache) and hands back the
window it ends with.

How, with fixed shapes and no host read: the rows are copied into a longer buffer in which
every segment is preceded by its own K-1 window rows, so no tap ever reaches into another
segment, and each row reads its K-row window from there (:func:`causal_conv_window`, the same
rule the one-token decode step applies to its cached window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..segments import segment_ids


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


def causal_conv_window(windows: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One output of a depthwise causal conv from its window: ``sum_k taps[..., k] * windows[..., k]
    + bias``; tap K-1 multiplies the newest input.

    windows, taps: (..., C, K). bias: (..., C) or None. Returns (..., C) in the promoted dtype.
    """
    out = (windows * taps).sum(-1)
    return out if bias is None else out + bias


def _window_positions(cu: torch.Tensor, K: int, at_end: bool) -> torch.Tensor:
    """(S, K-1) buffer rows of every segment's starting window (or, ``at_end``, its last K-1
    rows), in the buffer where segment s begins at ``cu[s] + s*(K-1)``."""
    S = cu.numel() - 1
    seg = torch.arange(S, device=cu.device)
    first = cu[1:] + seg * (K - 1) if at_end else cu[:-1] + seg * (K - 1)
    return first[:, None] + torch.arange(K - 1, device=cu.device)[None, :]


def segment_causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group: torch.Tensor,
    cu_seqlens: torch.Tensor,
    segment: torch.Tensor | None = None,
    initial_window: torch.Tensor | None = None,
    output_final_window: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise conv along the rows of each segment, each row with its group's taps.

    ``out[i] = bias[g] + sum_{j=0}^{K-1} weight[g, :, K-1-j] * x[i-j]`` with ``g = group[i]``,
    where ``x[i-j]`` before the start of row i's segment s is row ``K-1-(j-pos)`` of
    ``initial_window[s]`` (zeros without one), pos being row i's position in s: exactly
    ``F.conv1d`` over the window followed by the segment.

    Args:
        x: (M, C) rows, segments laid out one after the other.
        weight: (G, C, K) taps per group; tap K-1 multiplies the current row. bias: (G, C) or None.
        group: (M,) int64 in [0, G): which weight each row uses.
        cu_seqlens: (S+1,) int32/int64 segment boundaries, 0 = cu[0] <= ... <= cu[S] = M
            (empty segments allowed).
        segment: (M,) the segment of every row, if the caller has it (else counted from cu).
        initial_window: (S, K-1, C) inputs before each segment (oldest first), or None.
        output_final_window: also return each segment's last K-1 inputs (its window included,
            so a short or empty segment passes its window on).
    Returns:
        out (M, C) in the promoted dtype of x and weight, and the final windows (S, K-1, C) in
        x's dtype, or None.

    Example:
        >>> x = torch.randn(7, 3); w = torch.randn(2, 3, 4); b = torch.randn(2, 3)
        >>> group = torch.tensor([0, 0, 0, 1, 1, 1, 1])
        >>> cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)  # the middle segment is empty
        >>> out, _ = segment_causal_conv(x, w, b, group, cu)
        >>> ref = F.conv1d(F.pad(x[3:].T, (3, 0))[None], w[1][:, None, :], b[1], groups=3)[0].T
        >>> torch.allclose(out[3:], ref, atol=1e-6)
        True
    """
    M, C = x.shape
    G, _, K = weight.shape
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    S = cu.numel() - 1
    if M == 0:
        final = initial_window if initial_window is not None else x.new_zeros(S, K - 1, C)
        return x.new_zeros(0, C, dtype=torch.promote_types(x.dtype, weight.dtype)), (
            final.to(x.dtype) if output_final_window else None)
    seg = segment_ids(cu, M) if segment is None else segment
    # The buffer: segment s at rows [cu[s] + s*(K-1), cu[s+1] + (s+1)*(K-1)), its window first.
    row_at = torch.arange(M, device=x.device) + (seg + 1) * (K - 1)
    buffer = x.new_zeros(M + S * (K - 1), C)
    if initial_window is not None:
        buffer = buffer.index_copy(0, _window_positions(cu, K, False).reshape(-1),
                                   initial_window.reshape(-1, C).to(x.dtype))
    buffer = buffer.index_copy(0, row_at, x)
    windows = buffer.unfold(0, K, 1).index_select(0, row_at - (K - 1))  # (M, C, K): rows i-K+1 .. i
    # Every row's taps (and bias) in one gather: (M, C*K [+ C]).
    table = weight.reshape(G, C * K) if bias is None else torch.cat([weight.reshape(G, C * K), bias], dim=1)
    per_row = gather_rows(table, group)
    out = causal_conv_window(windows, per_row[:, : C * K].view(M, C, K), None if bias is None else per_row[:, C * K :])
    final = None
    if output_final_window:
        final = buffer[_window_positions(cu, K, True)]  # (S, K-1, C)
    return out, final


def segment_causal_conv_reference(x, weight, bias, group, cu_seqlens, initial_window=None):
    """The obvious version: ``F.conv1d`` on each segment alone (its first row's group), after
    its initial window (zeros without one). Slow, host-synchronising; for tests. Returns out
    (M, C) and the final windows (S, K-1, C)."""
    out = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    K, C = weight.shape[-1], x.shape[1]
    bounds = cu_seqlens.tolist()
    finals = []
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        window = x.new_zeros(K - 1, C) if initial_window is None else initial_window[s].to(x.dtype)
        seq = torch.cat([window, x[lo:hi]])  # (K-1 + len, C)
        finals.append(seq[seq.shape[0] - (K - 1):])
        if hi == lo:
            continue
        g = int(group[lo])
        b = None if bias is None else bias[g].to(out.dtype)
        out[lo:hi] = F.conv1d(seq.T.to(out.dtype)[None], weight[g].to(out.dtype)[:, None, :], b, groups=C)[0].T
    return out, torch.stack(finals)
