"""The MoSSE layer (spec section 2), and the claim in the paper's title: a MoSSE layer *is* a
(routed, linear) multi-head attention.

Everything here is float64 and derived independently from the layer's parameters: the router,
the expert projections, the conv along each expert's own sequence, Delta~, A, and then the
explicit T x T decayed attention matrix of every expert (query C, key Delta~ B, value x, plus
the initial-state term). The layer's per-expert y (captured at its scan) and its output o must
equal those formulas to float64 precision.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mossnet.layers.mosse import MoSSE
from mossnet.layers.sequence_layout import SequenceLayout
from mossnet.ops.mosse import mosse_scan
from mossnet.ops.mosse.read_out import unfold_output
from mosse_helpers import randomize_mosse_
from mosse_reference import mosse_reference

F64_TOL = 1e-10


def max_rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make_layer(tiny_config, E=4, k=2, state_update="routed", dtype=torch.float64, **kw):
    cfg = tiny_config(
        d_model=12, ssm_experts=E, ssm_top_k=k, ssm_head_dim=6, ssm_state_dim=5,
        state_update=state_update, chunk_size=8, **kw,
    )
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.0)
    return layer.to(dtype)


def random_states(layer, batch, dtype=torch.float64):
    E, P, N, K = layer.n_experts, layer.head_dim, layer.state_dim, layer.conv_kernel
    conv = torch.randn(batch, E, K - 1, P + 2 * N, dtype=dtype)
    ssm = torch.randn(batch, E, N, P, dtype=dtype)
    return conv, ssm


def run_layer(layer, u, valid=None, conv=None, ssm=None, return_states=False):
    """Forward, capturing the per-expert y (scan output + D x) that the layer computed, laid
    out as (batch, T, E, P) (zeros where the expert does not see the token)."""
    captured = {}
    mix, scan = layer._mix, layer._scan

    def spy_mix(flat, rows, *args, **kwargs):
        captured["rows"] = rows
        return mix(flat, rows, *args, **kwargs)

    def spy_scan(x, B, C, dt, params, *args, **kwargs):
        y_folded, scale, final = scan(x, B, C, dt, params, *args, **kwargs)
        captured["y"] = unfold_output(y_folded.reshape(x.shape), scale, x, params.skip_D)
        return y_folded, scale, final

    layer._mix, layer._scan = spy_mix, spy_scan
    try:
        layout = SequenceLayout.build(u.shape[0], u.shape[1], None if valid is None else valid.long())
        o, report, states = layer(u, layout, conv, ssm, return_states)
    finally:
        del layer._mix, layer._scan
    batch, T = u.shape[:2]
    rows, E = captured["rows"], layer.n_experts
    real = rows.expert < E
    y = torch.zeros(batch * T, E, layer.head_dim, dtype=captured["y"].dtype)
    y[rows.token[real], rows.expert[real]] = captured["y"][real]
    return o, y.view(batch, T, E, -1), report, states


def derive(layer, u, conv0=None, S0=None, valid=None):
    """Spec section 2 from the layer's parameters, in float64, written independently of the
    layer's code. u: (batch, T, D). Returns a dict of the intermediate quantities."""
    batch, T, _ = u.shape
    E, k, P, N, K = layer.n_experts, layer.experts_per_token, layer.head_dim, layer.state_dim, layer.conv_kernel
    Cc = P + 2 * N
    valid = torch.ones(batch, T, dtype=torch.bool) if valid is None else valid
    vf = valid[..., None].double()
    # 1. router
    if layer.router is not None:
        probs = torch.softmax(u @ layer.router.weight.T, dim=-1)
        top = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :k]
        m = torch.zeros_like(probs).scatter(-1, top, 1.0)
        g = probs * m
        if k > 1 and layer.router.renormalize:
            g = g / g.sum(-1, keepdim=True)
    else:
        probs = m = g = torch.ones(batch, T, 1, dtype=u.dtype)
    m, g = m * vf, g * vf
    # 2. the sequence of each expert
    visit = m if layer.routed else torch.ones_like(m) * vf
    # 3. projections
    proj = torch.einsum("btd,efd->btef", u, layer.in_proj)
    z, xBC, d = proj.split([P, Cc, 1], dim=-1)
    # 4. short conv along each expert's sequence (carried window conv0), then SiLU
    conv_out = torch.zeros_like(xBC)
    for b in range(batch):
        for e in range(E):
            idx = visit[b, :, e].nonzero().flatten()
            hist = torch.zeros(K - 1, Cc, dtype=u.dtype) if conv0 is None else conv0[b, e]
            seq = torch.cat([hist, xBC[b, idx, e]])
            out = F.conv1d(seq.T[None], layer.conv_weight[e][:, None, :], layer.conv_bias[e], groups=Cc)[0].T
            conv_out[b, idx, e] = out
    x, B, C = F.silu(conv_out).split([P, N, N], dim=-1)
    # 5. step size, decay
    dt = F.softplus(d[..., 0] + layer.dt_bias) * visit  # Delta~ (routing-masked)
    A = -torch.exp(layer.A_log)
    # 6. the explicit T x T attention matrix of each expert
    cs = torch.cumsum(dt * A, dim=1)  # A * sum_{r<=t} Delta~_r
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    S0 = torch.zeros(batch, E, N, P, dtype=u.dtype) if S0 is None else S0
    ys, Ms = [], []
    for e in range(E):
        decay = (cs[:, :, None, e] - cs[:, None, :, e]).masked_fill(~causal, float("-inf")).exp()
        M = (C[:, :, e] @ B[:, :, e].transpose(1, 2)) * dt[:, None, :, e] * decay  # (batch, t, tau)
        y = M @ x[:, :, e] + cs[:, :, e, None].exp() * (C[:, :, e] @ S0[:, e]) + layer.D[e] * x[:, :, e]
        ys.append(y)
        Ms.append(M)
    y = torch.stack(ys, dim=2)  # (batch, T, E, P)
    # 7. read-out: gate, then per-expert RMSNorm, then the router gate and W_o
    gated = y * F.silu(z)
    normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.norm_weight
    yhat = g[..., None] * normed
    o = torch.einsum("btep,edp->btd", yhat, layer.out_proj)
    return dict(y=y, o=o, M=torch.stack(Ms, 1), g=g, m=m, probs=probs, visit=visit, x=x, B=B, C=C, dt=dt, z=z)


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("E,k", [(4, 2), (4, 1), (3, 3), (1, 1)])
@pytest.mark.parametrize("with_states", [False, True])
def test_attention_identity(tiny_config, state_update, E, k, with_states):
    """y and o of the layer equal the explicit attention-matrix formulas of spec section 2."""
    layer = make_layer(tiny_config, E, k, state_update)
    batch, T = 2, 13
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    conv0, S0 = random_states(layer, batch) if with_states else (None, None)
    o, y, _, _ = run_layer(layer, u, None, conv0, S0)
    ref = derive(layer, u, conv0, S0)
    assert o.dtype == torch.float64 and y.dtype == torch.float64
    # y is only defined where the expert sees the token (elsewhere: "any value", gate 0).
    seen = ref["visit"].bool()
    assert max_rel(y[seen], ref["y"][seen]) < F64_TOL
    assert max_rel(o, ref["o"]) < F64_TOL
    # The test-side reference layer (which test_mosse_vs_reference compares with) obeys it too.
    o_r, y_r, _, _ = mosse_reference(layer, u, SequenceLayout.build(batch, T), conv0, S0)
    assert max_rel(y_r[seen], ref["y"][seen]) < F64_TOL and max_rel(o_r, ref["o"]) < F64_TOL
    # The attention matrix is causal and is zero on keys the expert did not see.
    M = ref["M"]
    assert (M.triu(1) == 0).all()
    assert (M.permute(0, 3, 1, 2)[~seen] == 0).all()  # M[b, e, t, tau] at unseen (b, tau, e)


def test_dense_case_is_softmax_weighted_multi_head_linear_attention(tiny_config):
    """k = E and state_update="all": every head sees every token and o_t = sum_e pi_{t,e} head_e."""
    E = 4
    layer = make_layer(tiny_config, E, E, "all")
    u = torch.randn(2, 11, 12, dtype=torch.float64)
    o, _, _, _ = run_layer(layer, u)
    ref = derive(layer, u)
    assert (ref["m"] == 1).all()
    torch.testing.assert_close(ref["g"], ref["probs"], rtol=1e-12, atol=0)  # the gates are the softmax
    # Written out head by head: o_t = sum_e softmax(W_r u_t)_e * W_o^e RMSNorm((M_e x_e + D_e x_e) * SiLU(z_e)).
    want = torch.zeros_like(o)
    for e in range(E):
        y_e = ref["M"][:, e] @ ref["x"][:, :, e] + layer.D[e] * ref["x"][:, :, e]
        h = y_e * F.silu(ref["z"][:, :, e])
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.norm_weight[e]
        want += ref["probs"][..., e, None] * (h @ layer.out_proj[e].T)
    assert max_rel(o, want) < F64_TOL


@pytest.mark.parametrize("k", [1, 2])
def test_routed_equals_each_expert_on_its_compacted_subsequence(tiny_config, k):
    """state_update="routed": expert e's projection, conv and scan run on the tokens routed to
    e only, in order, as if the others did not exist; the final conv and SSM states too."""
    layer = make_layer(tiny_config, 4, k, "routed")
    batch, T = 2, 17
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    conv0, S0 = random_states(layer, batch)
    o, _, _, (conv1, S1) = run_layer(layer, u, None, conv0, S0, return_states=True)
    ref = derive(layer, u)
    E, P, N = layer.n_experts, layer.head_dim, layer.state_dim
    Cc = P + 2 * N
    want = torch.zeros_like(o)
    for b in range(batch):
        for e in range(E):
            idx = ref["m"][b, :, e].nonzero().flatten()
            sub = u[b, idx]  # the compacted subsequence of expert e
            z, xBC, d = (sub @ layer.in_proj[e].T).split([P, Cc, 1], dim=-1)
            seq = torch.cat([conv0[b, e], xBC])
            xBC = F.conv1d(seq.T[None], layer.conv_weight[e][:, None, :], layer.conv_bias[e], groups=Cc)[0].T
            x, B, C = F.silu(xBC).split([P, N, N], dim=-1)
            dt = F.softplus(d[:, 0] + layer.dt_bias[e])
            A = -torch.exp(layer.A_log[e : e + 1])
            y, S = mosse_scan(
                x[None, :, None], dt[None, :, None], A, B[None, :, None], C[None, :, None], layer.D[e : e + 1],
                S0[b, e][None, None], output_final_state=True, impl="reference",
            )
            h = y[0, :, 0] * F.silu(z)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.norm_weight[e]
            want[b, idx] += ref["g"][b, idx, e, None] * (h @ layer.out_proj[e].T)
            assert max_rel(S1[b, e], S[0, 0]) < F64_TOL, (b, e)
            assert max_rel(conv1[b, e], seq[-(layer.conv_kernel - 1):]) < F64_TOL, (b, e)
    assert max_rel(o, want) < F64_TOL


@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_padding_is_routed_nowhere(tiny_config, state_update):
    """attention_mask = 0 tokens: o = 0 there, no expert sees them, the other outputs and the
    final states do not depend on their values."""
    layer = make_layer(tiny_config, 4, 2, state_update)
    u = torch.randn(2, 10, 12, dtype=torch.float64)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, :3] = False  # left padding
    valid[1, 6:] = False  # right padding
    conv0, S0 = random_states(layer, 2)
    o, _, report, states = run_layer(layer, u, valid, conv0, S0, return_states=True)
    ref = derive(layer, u, conv0, S0, valid)
    assert max_rel(o, ref["o"]) < F64_TOL
    assert (o[~valid] == 0).all()
    u2 = torch.where(valid[..., None], u, torch.randn_like(u) * 10)
    o2, _, report2, states2 = run_layer(layer, u2, valid, conv0, S0, return_states=True)
    assert torch.equal(o, o2)
    assert torch.equal(states[0], states2[0]) and torch.equal(states[1], states2[1])
    assert int(report.load.sum()) == int(valid.sum()) * layer.experts_per_token
    assert torch.equal(report.load, report2.load)


# --------------------------------------------------------------------- recurrent (step) path


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("E,k", [(4, 2), (1, 1)])
@pytest.mark.parametrize("z_bias_and_zero_decay", [False, True])
def test_steps_equal_forward(tiny_config, state_update, E, k, z_bias_and_zero_decay):
    """T one-token steps (the decode path) equal one forward, outputs and final states; also
    with a z bias and an expert without decay (A_log = -inf)."""
    layer = make_layer(tiny_config, E, k, state_update, ssm_z_bias=z_bias_and_zero_decay)
    if z_bias_and_zero_decay:
        with torch.no_grad():
            layer.z_bias.normal_()
            layer.A_log[0] = float("-inf")
    batch, T = 2, 9
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    conv0, S0 = random_states(layer, batch)
    o, _, _, (conv1, S1) = run_layer(layer, u, None, conv0, S0, return_states=True)
    conv, S = conv0.clone(), S0.clone()
    steps = torch.cat([layer(u[:, t : t + 1], None, conv, S, decode=True)[0] for t in range(T)], 1)
    assert max_rel(steps, o) < F64_TOL
    assert max_rel(conv, conv1) < F64_TOL and max_rel(S, S1) < F64_TOL


def test_step_touches_only_routed_experts_states(tiny_config):
    """Routed decode: an expert's conv window and SSM state are bit-identical across a token
    that is not routed to it, and change when it is."""
    layer = make_layer(tiny_config, 4, 2, "routed")
    batch, T = 3, 12
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    conv, S = random_states(layer, batch)
    moved = torch.zeros(4, dtype=torch.long)
    for t in range(T):
        chosen = layer.router(u[:, t]).top_idx  # the router is per token: the step routes the same
        before_conv, before_S = conv.clone(), S.clone()
        layer(u[:, t : t + 1], None, conv, S, decode=True)
        for b in range(batch):
            for e in range(4):
                if e in chosen[b].tolist():
                    assert not torch.equal(S[b, e], before_S[b, e])
                    moved[e] += 1
                else:
                    assert torch.equal(conv[b, e], before_conv[b, e]) and torch.equal(S[b, e], before_S[b, e])
    assert (moved > 0).all() and (moved < batch * T).all(), "routing should be non-trivial"


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_forward_states_do_not_move_on_unrouted_tokens(tiny_config, impl):
    """Forward with return_states: appending a token not routed to expert e leaves e's final
    conv and SSM states unchanged, and moves them when it is routed to e. (Not bit-identical:
    the projections of a longer input are different matmul shapes, so rounding may differ.)"""
    layer = make_layer(tiny_config, 4, 2, "routed", scan_impl=impl)
    batch, T = 2, 10
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    conv0, S0 = random_states(layer, batch)
    prev = (conv0, S0)
    still = moved = 0
    for t in range(1, T + 1):
        _, _, _, (conv, S) = run_layer(layer, u[:, :t], None, conv0, S0, return_states=True)
        chosen = layer.router(u[:, t - 1]).top_idx
        for b in range(batch):
            for e in range(4):
                if e not in chosen[b].tolist():
                    assert max_rel(conv[b, e], prev[0][b, e]) < 1e-13
                    assert max_rel(S[b, e], prev[1][b, e]) < 1e-13
                    still += 1
                else:
                    assert max_rel(conv[b, e], prev[0][b, e]) > 1e-3
                    assert max_rel(S[b, e], prev[1][b, e]) > 1e-3
                    moved += 1
        prev = (conv, S)
    assert still > 0 and moved > 0


def test_chunks_with_states_equal_one_forward(tiny_config):
    """Forward over two chunks, carrying (conv, ssm) states, equals one forward."""
    layer = make_layer(tiny_config, 4, 2, "routed")
    u = torch.randn(2, 15, 12, dtype=torch.float64)
    o, _, _, (c1, s1) = run_layer(layer, u, return_states=True)
    oa, _, _, (ca, sa) = run_layer(layer, u[:, :7], return_states=True)
    ob, _, _, (cb, sb) = run_layer(layer, u[:, 7:], None, ca, sa, return_states=True)
    assert max_rel(torch.cat([oa, ob], 1), o) < F64_TOL
    assert max_rel(cb, c1) < F64_TOL and max_rel(sb, s1) < F64_TOL


def test_gradients_flow_to_every_parameter(tiny_config):
    layer = make_layer(tiny_config, 4, 2, "routed", dtype=torch.float32)
    u = torch.randn(2, 9, 12, requires_grad=True)
    o, report, _ = layer(u, SequenceLayout.build(2, 9))
    (o.square().sum() + report.aux + report.z).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(u.grad).all()


def test_fp32_layer_close_to_fp64(tiny_config):
    """The default fp32 layer agrees with its float64 copy (no precision cliff)."""
    layer = make_layer(tiny_config, 4, 2, "routed", dtype=torch.float32)
    u = torch.randn(2, 13, 12)
    o32, _, _ = layer(u, SequenceLayout.build(2, 13))
    o64, _, _ = layer.double()(u.double(), SequenceLayout.build(2, 13))
    assert max_rel(o32, o64) < 1e-4


def test_conversion_identity_is_causal_linear_attention(tiny_config):
    """Spec section 8: with state_update="all", A = 0 (A_log = -inf), Delta = 1, D = 0 and an
    identity conv, expert h's y is sum_{s<=t} (SiLU(q_t) . SiLU(k_s)) SiLU(v_s) for the
    projections q = W_q u (C rows), k = W_k u (B rows), v = W_v u (x rows)."""
    E, T = 3, 21
    layer = make_layer(tiny_config, E, E, "all")
    P, N = layer.head_dim, layer.state_dim
    W_q, W_k, W_v = (torch.randn(E, n, 12, dtype=torch.float64) * 0.4 for n in (N, N, P))
    with torch.no_grad():
        layer.in_proj[:, P : 2 * P] = W_v  # rows: z (P), x (P), B (N), C (N), dt_raw (1)
        layer.in_proj[:, 2 * P : 2 * P + N] = W_k
        layer.in_proj[:, 2 * P + N : 2 * P + 2 * N] = W_q
        layer.in_proj[:, -1] = 0.0
        layer.dt_bias.fill_(math.log(math.expm1(1.0)))  # softplus^-1(1)
        layer.A_log.fill_(float("-inf"))
        layer.D.zero_()
        layer.conv_weight.zero_()
        layer.conv_weight[:, :, -1] = 1.0
        layer.conv_bias.zero_()
    u = torch.randn(2, T, 12, dtype=torch.float64)
    _, y, _, _ = run_layer(layer, u)
    q, k, v = (F.silu(torch.einsum("btd,end->bten", u, W)) for W in (W_q, W_k, W_v))
    scores = torch.einsum("bten,bsen->btse", q, k) * torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
    want = torch.einsum("btse,bsep->btep", scores, v)
    assert max_rel(y, want) < F64_TOL


@pytest.mark.parametrize("state_update, E, k", [("all", 4, 2), ("all", 3, 3), ("routed", 3, 3), ("routed", 1, 1)])
@pytest.mark.parametrize("with_states", [False, True])
def test_uniform_segments_equal_the_packed_path(tiny_config, monkeypatch, state_update, E, k, with_states):
    """Rows holding every (token, expert) pair, without padding or packed documents, run the conv
    and the scan as a plain batch (``ExpertSegments.uniform``): outputs, final states and every
    gradient equal the general packed path's (forced by building the segments without
    ``every_pair``). With padding the general path runs."""
    from mossnet.layers import expert_segments

    layer = make_layer(tiny_config, E, k, state_update)
    u = torch.randn(2, 11, 12, dtype=torch.float64, requires_grad=True)
    conv, ssm = random_states(layer, 2) if with_states else (None, None)
    built = []
    build = expert_segments.ExpertSegments.build.__func__

    def spy(cls, rows, layout, n_experts, every_pair=False):
        built.append(build(cls, rows, layout, n_experts, every_pair))
        return built[-1]

    def run():
        o, report, states = layer(u, SequenceLayout.build(2, 11), conv, ssm, return_states=with_states)
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()
        if states is not None:
            loss = loss + states[0].sum() + states[1].square().sum()
        grads = torch.autograd.grad(loss, [u, *layer.parameters()])
        return o, states, grads

    monkeypatch.setattr(expert_segments.ExpertSegments, "build", classmethod(spy))
    fast = run()
    assert built and all(s.uniform for s in built)
    monkeypatch.setattr(expert_segments.ExpertSegments, "build",
                        classmethod(lambda cls, rows, layout, n, every_pair=False: build(cls, rows, layout, n, False)))
    slow = run()
    assert max_rel(fast[0], slow[0]) < F64_TOL
    if with_states:
        assert max_rel(fast[1][0], slow[1][0]) < F64_TOL and max_rel(fast[1][1], slow[1][1]) < F64_TOL
    for a, b in zip(fast[2], slow[2]):
        assert max_rel(a, b) < F64_TOL

    built.clear()
    monkeypatch.setattr(expert_segments.ExpertSegments, "build", classmethod(spy))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :3] = 0
    layer(u, SequenceLayout.build(2, 11, attention_mask=mask))
    assert built and not any(s.uniform for s in built)


@pytest.mark.parametrize("packed", [False, True])
def test_segments_of_a_batch_without_padding_skip_the_padding_rule(packed):
    """Rows that are all routed (``every_row_routed``) give the same segments without the
    padding rule as with it."""
    import dataclasses

    from mossnet.layers.expert_segments import ExpertSegments
    from mossnet.layers.sequence_layout import SequenceLayout
    from mossnet.ops.moe import dispatch_by_expert

    torch.manual_seed(0)
    batch, T, E, k = 3, 11, 4, 2
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(batch * T)])
    rows = dispatch_by_expert(idx, None, E)
    assert rows.every_row_routed
    # packed: documents restart their positions at 0 (the layout's packed-document rule)
    positions = torch.tensor([list(range(5)) + list(range(6)), list(range(11)),
                              list(range(3)) + list(range(3)) + list(range(5))])
    layout = SequenceLayout.build(batch, T, position_ids=positions if packed else None)
    assert (layout.n_documents > batch) == packed
    fast = ExpertSegments.build(rows, layout, E)
    slow = ExpertSegments.build(dataclasses.replace(rows, every_row_routed=False), layout, E)
    for field in ("segment", "cu_seqlens", "expert_of_segment"):
        assert torch.equal(getattr(fast, field), getattr(slow, field)), field
    # And they are right: one segment per (expert, document) pair, rows in segment order.
    doc = layout.document_of_token(torch.device("cpu"))[rows.token]
    pairs = {}
    for seg, e, d in zip(fast.segment.tolist(), rows.expert.tolist(), doc.tolist()):
        assert fast.expert_of_segment[seg] == e
        assert pairs.setdefault((e, d), seg) == seg
    assert len(set(pairs.values())) == len(pairs)
    assert torch.equal(fast.cu_seqlens.diff().long(), torch.bincount(fast.segment, minlength=fast.cu_seqlens.numel() - 1))


@pytest.mark.parametrize("packed", [False, True])
def test_segment_boundaries_by_search_equal_the_count_a_trace_uses(packed, monkeypatch):
    """The segment boundaries come from a search over the sorted segment ids, or, inside a trace
    (ONNX has no searchsorted), from counting each segment's rows: the same boundaries, padding
    segments and empty segments included."""
    from mossnet.layers import expert_segments
    from mossnet.layers.sequence_layout import SequenceLayout
    from mossnet.ops.moe import dispatch_by_expert

    torch.manual_seed(1)
    batch, T, E, k = 3, 11, 4, 2
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(batch * T)])
    idx[:, 0] = torch.where(idx[:, 0] == 3, 0, idx[:, 0])  # expert 3 rarely chosen
    mask = torch.ones(batch, T, dtype=torch.long)
    mask[1, :4] = 0
    positions = torch.tensor([list(range(5)) + list(range(6)), list(range(11)),
                              list(range(3)) + list(range(3)) + list(range(5))])
    layout = SequenceLayout.build(batch, T, attention_mask=mask, position_ids=positions if packed else None)
    rows = dispatch_by_expert(idx, layout.valid.reshape(-1), E, impl="reference")
    searched = expert_segments.ExpertSegments.build(rows, layout, E)
    monkeypatch.setattr(expert_segments, "tracing", lambda: True)
    counted = expert_segments.ExpertSegments.build(rows, layout, E)
    assert searched.cu_seqlens.dtype == counted.cu_seqlens.dtype == torch.int32
    assert torch.equal(searched.cu_seqlens, counted.cu_seqlens)
    assert torch.equal(searched.cu_seqlens.diff().long(),
                       torch.bincount(searched.segment, minlength=searched.cu_seqlens.numel() - 1))
