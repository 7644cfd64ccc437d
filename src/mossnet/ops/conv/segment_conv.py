"""The short conv of spec section 2.4 on a compact (packed) layout: one flat axis of rows cut
into contiguous segments, each row with its own weight group.

The MoSSE sorts its rows by expert and, inside an expert, by (batch row, document, time), so
every segment holds exactly one expert's subsequence of one document: a causal depthwise conv
per segment, with that expert's taps, is the routed conv. A segment may start from a carried
window (the K-1 inputs its expert saw before, from the generation cache) and hands back the
window it ends with.

How, with fixed shapes and no host read: the rows are copied into a longer buffer in which
every segment is preceded by its own K-1 window rows, so no tap ever reaches into another
segment, and each row reads its K-row window from there (:func:`conv_at_rows`, the same rule
the one-token decode step applies to its cached window).

When the caller knows that every segment has the same length L (every token routed to every
expert, no padding, one document per batch row: ``state_update="all"`` training), the rows are
a plain (S, L, C) batch: each tap is then a shifted slice times its segment's taps, with no
per-row gathers of rows or weights (:class:`_UniformConv`). Same result, far less memory traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mossnet.ops.fused import choose, why_triton_cannot_run

from ..function_call import apply_function
from ..segments import segment_ids


# Backward of gather_rows: lanes per group that the gradient rows are spread over before the
# final sum (a plain index_add would pile all M/G rows of a group onto one address).
_SPREAD = 64


def group_sum(rows: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(M, ...) rows -> (n_groups, ...) sums of the rows of each group, accumulated in fp32
    (at least), returned in ``rows``' dtype.

    A plain ``index_add`` would pile the M/G rows of a group onto one address (atomic adds
    contend when G << M, as with the E experts of the MoSSE's rows): each group's rows are
    first summed into ``_SPREAD`` separate lanes, then the lanes are summed. Deterministic up to
    float summation order; no host read."""
    acc_dtype = torch.promote_types(rows.dtype, torch.float32)
    lane = torch.arange(group.numel(), device=group.device) % _SPREAD
    acc = torch.zeros(n_groups * _SPREAD, *rows.shape[1:], dtype=acc_dtype, device=rows.device)
    acc.index_add_(0, group * _SPREAD + lane, rows.to(acc_dtype))
    return acc.view(n_groups, _SPREAD, *rows.shape[1:]).sum(1).to(rows.dtype)


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
        return group_sum(grad, index, ctx.n_groups), None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table.index_select(0, index)``, with a backward made for few groups and many rows
    (:func:`group_sum`: the gradient of a gather is a scatter-add, and M rows falling on G << M
    table rows would make every address's atomic adds contend).

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
    return apply_function(_GatherRows, table, index)


def _window_positions(cu: torch.Tensor, K: int, at_end: bool) -> torch.Tensor:
    """(S, K-1) buffer rows of every segment's starting window (or, ``at_end``, its last K-1
    rows), in the buffer where segment s begins at ``cu[s] + s*(K-1)``."""
    S = cu.numel() - 1
    seg = torch.arange(S, device=cu.device)
    first = cu[1:] + seg * (K - 1) if at_end else cu[:-1] + seg * (K - 1)
    return first[:, None] + torch.arange(K - 1, device=cu.device)[None, :]


class _WindowConv(torch.autograd.Function):
    """out[i] = bias[g_i] + sum_k weight[g_i, :, k] * buffer[at_i - (K-1) + k], g = group.

    Written as a Function so that the backward keeps only the buffer: autograd would keep each
    row's copy of its taps, (M, C, K), for every layer -- K times the activations. The backward
    gathers them again."""

    @staticmethod
    def forward(ctx, buffer, weight, bias, group, row_at):
        K = weight.shape[-1]
        out = None
        for k in range(K):
            term = buffer.index_select(0, row_at - (K - 1 - k)) * weight[:, :, k].index_select(0, group)
            out = term if out is None else out + term
        if bias is not None:
            out = out + bias.index_select(0, group)
        ctx.save_for_backward(buffer, weight, group, row_at)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        buffer, weight, group, row_at = ctx.saved_tensors
        G, C, K = weight.shape
        acc = torch.promote_types(grad.dtype, torch.float32)
        grad_buffer = torch.zeros(buffer.shape, dtype=acc, device=buffer.device)
        grad_weight = torch.empty(G, C, K, dtype=acc, device=weight.device)
        for k in range(K):
            at = row_at - (K - 1 - k)  # distinct rows for one k: no contending adds
            grad_buffer.index_add_(0, at, (grad * weight[:, :, k].index_select(0, group)).to(acc))
            grad_weight[:, :, k] = group_sum(grad * buffer.index_select(0, at), group, G)
        grad_bias = group_sum(grad, group, G).to(weight.dtype) if ctx.has_bias else None
        return grad_buffer.to(buffer.dtype), grad_weight.to(weight.dtype), grad_bias, None, None


def conv_at_rows(buffer: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, group: torch.Tensor,
                 row_at: torch.Tensor) -> torch.Tensor:
    """The depthwise causal conv's output at chosen rows of a buffer: the one rule of the
    forward (:func:`segment_causal_conv`) and of the decode step (its cached window + the new
    input).

    ``out[i] = bias[g] + sum_k weight[g, :, k] * buffer[row_at[i] - (K-1) + k]`` with
    ``g = group[i]``: tap K-1 multiplies the row itself, tap 0 the oldest of its window.

    Args:
        buffer: (L, C); weight: (G, C, K); bias: (G, C) or None; group: (M,) int64 in [0, G);
            row_at: (M,) int64 >= K-1.
    Returns:
        (M, C) in the promoted dtype of buffer and weight.

    Example:
        >>> window = torch.randn(4, 3)  # K = 4 inputs, oldest first, of C = 3 channels
        >>> w, b = torch.randn(1, 3, 4), torch.randn(1, 3)
        >>> out = conv_at_rows(window, w, b, torch.zeros(1, dtype=torch.long), torch.tensor([3]))
        >>> torch.allclose(out[0], (window.T * w[0]).sum(-1) + b[0])
        True
    """
    return apply_function(_WindowConv, buffer, weight, bias, group, row_at)


class _UniformConv(torch.autograd.Function):
    """out[s, t] = bias[s] + sum_k weight[s, :, k] * buffer[s, t + k]: the conv of S segments of
    equal length T, each after its K-1 window rows (buffer (S, T+K-1, C), weight (S, C, K)).

    A Function so that the backward keeps only the buffer (autograd would also keep K-1 zero
    padded gradient buffers); the backward's slice adds touch distinct rows per tap."""

    @staticmethod
    def forward(ctx, buffer, weight, bias):
        K = weight.shape[-1]
        T = buffer.shape[1] - (K - 1)
        # One pass per tap, accumulating in place (no K product tensors), in the promoted dtype.
        out = buffer[:, :T] * weight[:, None, :, 0]
        for k in range(1, K):
            out.addcmul_(buffer[:, k:k + T], weight[:, None, :, k])
        if bias is not None:
            out += bias[:, None, :]
        ctx.save_for_backward(buffer, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        buffer, weight = ctx.saved_tensors
        K = weight.shape[-1]
        T = grad.shape[1]
        acc = torch.promote_types(grad.dtype, torch.float32)
        grad_buffer = torch.zeros(buffer.shape, dtype=acc, device=buffer.device)
        grad_weight = torch.empty(weight.shape, dtype=acc, device=weight.device)
        for k in range(K):
            grad_buffer[:, k:k + T].addcmul_(grad, weight[:, None, :, k])
            grad_weight[:, :, k] = (grad * buffer[:, k:k + T]).sum(1, dtype=acc)
        grad_bias = grad.sum(1, dtype=acc).to(weight.dtype) if ctx.has_bias else None
        return grad_buffer.to(buffer.dtype), grad_weight.to(weight.dtype), grad_bias


def _uniform_segment_conv(x, weight, bias, group, S, initial_window, output_final_window):
    """:func:`segment_causal_conv` when the M rows are S segments of M // S rows each."""
    M, C = x.shape
    K = weight.shape[-1]
    rows = x.view(S, M // S, C)
    window = rows.new_zeros(S, K - 1, C) if initial_window is None else initial_window.to(x.dtype)
    buffer = torch.cat([window, rows], dim=1)  # (S, K-1 + L, C)
    seg_group = group.view(S, M // S)[:, 0]
    seg_bias = None if bias is None else bias.index_select(0, seg_group)
    out = apply_function(_UniformConv, buffer, weight.index_select(0, seg_group), seg_bias).reshape(M, C)
    final = buffer[:, buffer.shape[1] - (K - 1):] if output_final_window else None
    return out, final


def segment_causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    group: torch.Tensor,
    cu_seqlens: torch.Tensor,
    segment: torch.Tensor | None = None,
    initial_window: torch.Tensor | None = None,
    output_final_window: bool = False,
    uniform: bool = False,
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
        uniform: the caller's promise that all S segments have M // S rows (``cu_seqlens`` is
            then not read), which takes the gather-free path. A wrong promise gives wrong
            results; it is checked only where that costs no host read (M % S).
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
    K = weight.shape[-1]
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    S = cu.numel() - 1
    if M == 0:
        final = initial_window if initial_window is not None else x.new_zeros(S, K - 1, C)
        return x.new_zeros(0, C, dtype=torch.promote_types(x.dtype, weight.dtype)), (
            final.to(x.dtype) if output_final_window else None)
    if uniform:
        if M % S:
            raise ValueError(f"segment_causal_conv: uniform segments, but {M} rows do not split into {S} segments")
        return _uniform_segment_conv(x, weight, bias, group, S, initial_window, output_final_window)
    seg = segment_ids(cu, M) if segment is None else segment
    # The buffer: segment s at rows [cu[s] + s*(K-1), cu[s+1] + (s+1)*(K-1)), its window first.
    row_at = torch.arange(M, device=x.device) + (seg + 1) * (K - 1)
    buffer = x.new_zeros(M + S * (K - 1), C)
    if initial_window is not None:
        buffer = buffer.index_copy(0, _window_positions(cu, K, False).reshape(-1),
                                   initial_window.reshape(-1, C).to(x.dtype))
    buffer = buffer.index_copy(0, row_at, x)
    out = conv_at_rows(buffer, weight, bias, group, row_at)
    final = buffer[_window_positions(cu, K, True)] if output_final_window else None  # (S, K-1, C)
    return out, final


def why_not_fused_conv_silu(x: torch.Tensor, weight: torch.Tensor, initial_window, segment) -> str | None:
    """None when the fused conv + SiLU (``conv_silu_triton.py``) computes this call; else why the
    PyTorch composition does."""
    reason = why_triton_cannot_run(x)
    if reason is not None:
        return reason
    from .conv_silu_triton import MAX_TAPS

    if initial_window is not None and initial_window.requires_grad and torch.is_grad_enabled():
        return "gradients into the carried conv windows (the kernel gives them none)"
    if segment is None:
        return "the caller gave no per-row segment ids"
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return "float64 tensors"
    if not 2 <= weight.shape[-1] <= MAX_TAPS:
        return f"a conv of {weight.shape[-1]} taps (the kernel takes 2 to {MAX_TAPS})"
    return None


def segment_conv_silu(x, weight, bias, group, cu_seqlens, segment=None, initial_window=None,
                      output_final_window: bool = False, uniform: bool = False, impl: str = "auto"):
    """``SiLU`` of :func:`segment_causal_conv` (same arguments), and its final windows.

    ``impl`` (the policy's ``fused_ops``): "auto" runs one Triton kernel each way where it can
    (:func:`why_not_fused_conv_silu`: CUDA, no gradient into carried windows) and the PyTorch
    composition elsewhere; "reference" always the composition; "triton" the kernel or an error.
    Returns (M, C) in the promoted dtype of x and weight, and the final windows or None."""
    if choose("the fused segment conv + SiLU", impl,
              lambda: why_not_fused_conv_silu(x, weight, initial_window, segment), x.is_cuda):
        from .conv_silu_triton import conv_silu_triton

        return conv_silu_triton(x, weight, bias, group, cu_seqlens, segment, initial_window, output_final_window)
    out, final = segment_causal_conv(x, weight, bias, group, cu_seqlens, segment, initial_window,
                                     output_final_window, uniform)
    return F.silu(out), final


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
