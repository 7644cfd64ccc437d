"""The MoSSE layer written the obvious, masked-dense way: the test-side reference that the
production layer (``mossnet.layers.mosse.MoSSE``, compact varlen layout) is compared with, as
flash-linear-attention keeps ``naive.py`` beside its kernels.

Every expert runs over the whole (batch, T) grid. Its sequence (spec section 2.2) is a mask:
``visit[b, t, e]`` = the token is valid and (routed mode) routed to e. The conv compacts each
(row, expert) subsequence (:func:`routed_causal_conv`); the scan gets dt masked to 0 where
the expert does not see the token, which leaves its state untouched (spec: masked-dense form).
Packed documents reset both at document starts. Carried states enter at each row's first
document and leave from its last.

Spec section 7's switches, written as directly: the full-sequence conv (of u with
``ssm_conv_placement="shared"``, of the shared B|C projection with ``ssm_share_bc``) is the
same routed conv with one "expert" that sees every valid token.

Shapes: E experts, P head dim, N state dim, K conv width, C = P + 2N (P with ``ssm_share_bc``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mossnet.execution import ExecutionPolicy
from mossnet.layers.router import RouterReport
from mossnet.ops.mosse import mosse_scan


def routed_causal_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    visit: torch.Tensor,
    doc_id: torch.Tensor | None = None,
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise conv per expert over the tokens that expert visits.

    Args:
        x: (batch, T, E, C) inputs (C = channels per expert).
        weight: (E, C, K) taps; tap K-1 multiplies the current token. bias: (E, C) or None.
        visit: (batch, T, E) bool, which tokens each expert sees.
        doc_id: (batch, T) int, document index inside each row (packed batches), or None.
        conv_state: (batch, E, K-1, C), the last K-1 inputs each expert saw before, or None (zeros).
    Returns:
        out: (batch, T, E, C), zero where ``visit`` is False; and, if asked, the new conv state
        (batch, E, K-1, C).

    Example:
        >>> x = torch.randn(2, 6, 3, 5); w = torch.randn(3, 5, 4)
        >>> visit = torch.rand(2, 6, 3) > 0.5
        >>> out, _ = routed_causal_conv(x, w, None, visit)
        >>> out.shape
        torch.Size([2, 6, 3, 5])
    """
    batch, T, E, C = x.shape
    K = weight.shape[-1]
    visit = visit.bool()
    # Slot of each visited token in its expert's compacted sequence, after the K-1 carried
    # inputs. Unvisited tokens all go to one extra "drop" slot at the end.
    rank = torch.cumsum(visit.long(), dim=1) - 1
    drop = T + K - 1
    slot = torch.where(visit, rank + (K - 1), torch.full_like(rank, drop))  # (batch, T, E)

    prefix = x.new_zeros(batch, K - 1, E, C) if conv_state is None else conv_state.transpose(1, 2).to(x.dtype)
    buf = torch.cat([prefix, x.new_zeros(batch, T + 1, E, C)], dim=1)  # (batch, T + K, E, C)
    buf = buf.scatter(1, slot[..., None].expand(-1, -1, -1, C), x)

    if doc_id is not None:
        # Document of every buffer slot; the carried prefix belongs to document 0.
        docs = doc_id.new_full((batch, T + K, E), -1)
        docs[:, : K - 1] = 0
        docs = docs.scatter(1, slot, doc_id[:, :, None].expand(-1, -1, E))
    # out[j] (compacted position j, buffer slot j + K - 1) = sum_i w[..., i] * buf[j + i]
    out = x.new_zeros(batch, T + 1, E, C)
    for i in range(K):
        tap = buf[:, i : i + T + 1] * weight[:, :, i]
        if doc_id is not None:
            same_doc = docs[:, i : i + T + 1] == docs[:, K - 1 :]
            tap = tap * same_doc[..., None].to(tap.dtype)
        out = out + tap
    if bias is not None:
        out = out + bias
    gather_at = torch.where(visit, rank, torch.full_like(rank, T))  # row T of `out` is the drop slot
    result = out.gather(1, gather_at[..., None].expand(-1, -1, -1, C))
    result = result * visit[..., None].to(result.dtype)

    new_state = None
    if output_final_state:
        count = visit.long().sum(dim=1)  # (batch, E) tokens each expert took in this chunk
        idx = count[:, None, :] + torch.arange(K - 1, device=x.device)[None, :, None]  # (batch, K-1, E)
        new_state = buf.gather(1, idx[..., None].expand(-1, -1, -1, C))
        if doc_id is not None:
            # Inputs from an earlier document than the last one must not leak into the next chunk.
            last_doc = doc_id[:, -1:, None].expand(-1, K - 1, E)
            new_state = new_state * (docs.gather(1, idx) == last_doc)[..., None].to(new_state.dtype)
        new_state = new_state.transpose(1, 2).contiguous()  # (batch, E, K-1, C)
    return result, new_state


def routed_causal_conv_reference(x, weight, bias, visit, doc_id=None, conv_state=None, output_final_state=False):
    """The obvious version: for every (row, expert), pull out the visited tokens, conv them
    document by document with ``F.conv1d``, and put them back. Slow; for tests."""
    batch, T, E, C = x.shape
    K = weight.shape[-1]
    out = torch.zeros_like(x)
    new_state = x.new_zeros(batch, E, K - 1, C)
    for b in range(batch):
        for e in range(E):
            idx = visit[b, :, e].nonzero().flatten()
            carried = x.new_zeros(K - 1, C) if conv_state is None else conv_state[b, e].to(x.dtype)
            docs = torch.zeros(len(idx), dtype=torch.long, device=x.device) if doc_id is None else doc_id[b, idx]
            last_doc = 0 if doc_id is None else int(doc_id[b, -1])
            # Only document 0 continues from the carried inputs; later documents start from zeros.
            seq_of_doc = {0: carried}
            for d in docs.unique(sorted=True).tolist():
                sel = idx[docs == d]
                history = carried if d == 0 else x.new_zeros(K - 1, C)
                seq = torch.cat([history, x[b, sel, e]], dim=0)  # (K-1 + n, C)
                y = F.conv1d(seq.T[None], weight[e][:, None, :], bias=None if bias is None else bias[e], groups=C)
                out[b, sel, e] = y[0].T
                seq_of_doc[d] = seq
            if last_doc in seq_of_doc:
                new_state[b, e] = seq_of_doc[last_doc][seq_of_doc[last_doc].shape[0] - (K - 1):]
    return out, (new_state if output_final_state else None)


def _rows_to_documents(layout, state):
    """(batch, ...) -> (n_documents, ...): each row's state on its first document, zeros elsewhere."""
    if state is None or layout.cu_seqlens is None:
        return state
    out = state.new_zeros(layout.cu_seqlens.numel() - 1, *state.shape[1:])
    return out.index_copy(0, layout.first_segment, state)


def _scan(layer, x, dt, A, B, C, layout, ssm_state, return_states, impl):
    """The scan over (batch, T), or over the flattened batch cut at documents when packed."""
    if layout.cu_seqlens is None:
        return mosse_scan(x, dt, A, B, C, layer.D, ssm_state, return_states, impl=impl)
    batch, T = x.shape[:2]
    flat = lambda t: t.reshape(1, batch * T, *t.shape[2:])  # noqa: E731
    y, final = mosse_scan(flat(x), flat(dt), A, flat(B), flat(C), layer.D, _rows_to_documents(layout, ssm_state),
                          return_states, cu_seqlens=layout.cu_seqlens, impl=impl)
    return y.view(batch, T, *y.shape[2:]), (None if final is None else final[layout.last_segment])


def full_sequence_conv(x, weight, bias, valid, doc_id=None, window=None, output_final_state=False):
    """The depthwise causal conv over every valid token of each document: the routed conv
    with one expert that visits every valid token. x: (batch, T, C); weight: (C, K); bias:
    (C,); valid: (batch, T) bool; window: (batch, K-1, C) or None. Returns (batch, T, C) (zero
    at padding) and the final window (batch, K-1, C) if asked."""
    out, final = routed_causal_conv(x[:, :, None], weight[None], bias[None], valid[..., None], doc_id,
                                    None if window is None else window[:, None], output_final_state)
    return out[:, :, 0], (None if final is None else final[:, 0])


def split_conv_state(layer, conv_state):
    """The layer's conv state -> (per-expert windows (batch, E, K-1, C) or None, the
    full-sequence conv's window (batch, K-1, channels) or None), as ``conv_window_shape``
    lays them out: with both, the experts' x windows (E, K-1, P) then the shared B|C window
    (K-1, 2N), flattened one after the other."""
    if conv_state is None:
        return None, None
    if layer.shared_conv:
        return None, conv_state
    if not layer.share_bc:
        return conv_state, None
    batch = conv_state.shape[0]
    E, P, N, K = layer.n_experts, layer.head_dim, layer.state_dim, layer.conv_kernel
    experts, shared = conv_state.split([E * (K - 1) * P, (K - 1) * 2 * N], dim=1)
    return experts.reshape(batch, E, K - 1, P), shared.reshape(batch, K - 1, 2 * N)


def join_conv_state(layer, experts, sequence):
    """The inverse of :func:`split_conv_state`."""
    if sequence is None:
        return experts
    if experts is None:
        return sequence
    return torch.cat([experts.reshape(experts.shape[0], -1), sequence.reshape(sequence.shape[0], -1)], dim=1)


def mosse_reference(layer, u, layout, conv_state=None, ssm_state=None, return_states=False, impl="reference"):
    """The MoSSE forward of ``layer``'s parameters, masked-dense.

    Args:
        layer: a ``MoSSE``; u: (batch, T, d_model); layout: a ``SequenceLayout``.
        conv_state (batch, *conv_window_shape), ssm_state (batch, E, N, P): carried states or None.
        impl: the scan execution ("reference": the loop over time).
    Returns:
        o (batch, T, d_model), y (batch, T, E, P) the scan output (+ D x; meaningful where the
        expert sees the token), the router report (None with one expert), and the new
        (conv, ssm) states or None.
    """
    batch, T, d_model = u.shape
    E, P, N = layer.n_experts, layer.head_dim, layer.state_dim
    n = batch * T
    valid = torch.ones(n, dtype=torch.bool, device=u.device) if layout.valid is None else layout.valid.reshape(n)
    routing = layer.route(u.reshape(n, d_model), None if layout.valid is None else valid,
                          ExecutionPolicy(fused_ops="reference"))
    chosen = torch.zeros(n, E, dtype=torch.bool, device=u.device).scatter(1, routing.top_idx, True)
    visit = (chosen if layer.routed else torch.ones_like(chosen)) & valid[:, None]
    visit = visit.view(batch, T, E)
    valid_bt = valid.view(batch, T)
    expert_window, sequence_window = split_conv_state(layer, conv_state)

    # The full-sequence conv (section 7): of u (shared placement) or of the shared B|C projection.
    conv_u = bc = new_sequence = None
    if layer.shared_conv:
        conv_u, new_sequence = full_sequence_conv(u, layer.shared_conv_weight, layer.shared_conv_bias, valid_bt,
                                                  layout.doc_id, sequence_window, return_states)
        if layer.share_bc:
            bc = F.silu(conv_u @ layer.bc_proj.to(u.dtype).T)
    elif layer.share_bc:
        bc_raw, new_sequence = full_sequence_conv(u @ layer.bc_proj.to(u.dtype).T, layer.shared_conv_weight,
                                                  layer.shared_conv_bias, valid_bt, layout.doc_id, sequence_window,
                                                  return_states)
        bc = F.silu(bc_raw)

    W = layer.in_proj.to(u.dtype)
    z = torch.einsum("btd,epd->btep", u, W[:, :P])
    dt_raw = torch.einsum("btd,ed->bte", u, W[:, -1])[..., None]
    features_in = u if conv_u is None else conv_u  # x (and B, C unless shared) are projected from this
    xBC = torch.einsum("btd,efd->btef", features_in, W[:, P:-1])
    if layer.z_bias is not None:
        z = z + layer.z_bias
    new_conv = None
    if not layer.shared_conv:
        xBC, new_conv = routed_causal_conv(xBC, layer.conv_weight, layer.conv_bias, visit, layout.doc_id,
                                           expert_window, return_states)
    if bc is None:
        x, B, C = F.silu(xBC).split([P, N, N], dim=-1)
    else:
        x = F.silu(xBC)
        B, C = bc[:, :, None, :].expand(-1, -1, E, -1).split([N, N], dim=-1)
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt = F.softplus(dt_raw[..., 0].to(cdt) + layer.dt_bias.to(cdt)) * visit
    A = -torch.exp(layer.A_log.to(cdt))
    y, final = _scan(layer, x, dt, A, B, C, layout, ssm_state, return_states, impl)

    gated = y.to(cdt) * F.silu(z.to(cdt))
    normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.norm_weight.to(cdt)
    gates = routing.dense_gates(E).view(batch, T, E, 1).to(cdt)
    o = torch.einsum("btep,edp->btd", (normed * gates).to(u.dtype), layer.out_proj.to(u.dtype))
    report = None
    if layer.router is not None:
        report = RouterReport.of(routing, (chosen & valid[:, None]).sum(0))
    new_conv = join_conv_state(layer, new_conv, new_sequence) if return_states else None
    return o, y, report, ((new_conv, final) if return_states else None)
