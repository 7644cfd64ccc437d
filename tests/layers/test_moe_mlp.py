"""The dropless MoE-MLP (spec section 3) against its token-by-token reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mossnet.layers.moe_mlp import MoEMLP, moe_mlp_reference


def max_rel(a, b):
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1e-6))


def make_mlp(n_experts=4, top_k=2, shared=False, renormalize=True, d_model=12, hidden=20):
    mlp = MoEMLP(d_model, hidden, n_experts, top_k, renormalize, shared)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(std=0.3)
        if n_experts > 1:
            mlp.router.weight.normal_(std=0.5)
    return mlp


@pytest.mark.parametrize("E,k", [(4, 1), (4, 2), (5, 3), (3, 3)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("renormalize", [False, True])
def test_matches_reference(E, k, shared, renormalize):
    mlp = make_mlp(E, k, shared, renormalize)
    u = torch.randn(23, 12, requires_grad=True)
    out, report = mlp(u)
    ref = moe_mlp_reference(mlp, u)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # Dropless: every (token, expert) assignment is computed.
    assert int(report.load.sum()) == 23 * k
    g = torch.randn_like(out)
    params = [u, *mlp.parameters()]
    got = torch.autograd.grad((out * g).sum(), params, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad((ref * g).sum(), params, allow_unused=True, materialize_grads=True)
    for (name, _), a, b in zip([("u", None), *mlp.named_parameters()], got, want):
        assert max_rel(a, b) < 1e-5, name


def test_unbalanced_router_is_dropless():
    """Every token wants expert 2 (and k-1 others): nothing is dropped, no capacity limit."""
    mlp = make_mlp(4, 2)
    with torch.no_grad():
        mlp.router.weight[2] = 5.0  # u > 0 below, so expert 2 has by far the largest logit
    u = torch.rand(40, 12) + 0.1
    out, report = mlp(u)
    assert report.load[2] == 40 and int(report.load.sum()) == 80
    torch.testing.assert_close(out, moe_mlp_reference(mlp, u), rtol=1e-5, atol=1e-6)
    # An expert that gets no token at all.
    with torch.no_grad():
        mlp.router.weight[0] = -5.0
    out, report = mlp(u)
    assert report.load[0] == 0
    torch.testing.assert_close(out, moe_mlp_reference(mlp, u), rtol=1e-5, atol=1e-6)


def test_padding_gets_zero_and_no_load():
    mlp = make_mlp(4, 2, shared=True)
    u = torch.randn(15, 12)
    valid = torch.rand(15) > 0.4
    out, report = mlp(u, valid)
    torch.testing.assert_close(out, moe_mlp_reference(mlp, u, valid), rtol=1e-5, atol=1e-6)
    assert (out[~valid] == 0).all()
    assert int(report.load.sum()) == 2 * int(valid.sum())
    # Values at padding do not matter.
    u2 = torch.where(valid[:, None], u, torch.randn_like(u) * 50)
    out2, report2 = mlp(u2, valid)
    assert torch.equal(out, out2) and torch.equal(report.load, report2.load)


def test_one_expert_is_a_dense_swiglu():
    mlp = make_mlp(1, 1)
    assert not hasattr(mlp, "router")
    u = torch.randn(9, 12)
    out, report = mlp(u)
    assert report is None
    gate, up = (u @ mlp.dense.gate_up.weight.T).chunk(2, dim=-1)
    want = (F.silu(gate) * up) @ mlp.dense.down.weight.T
    torch.testing.assert_close(out, want)


def test_one_expert_with_shared_expert():
    mlp = make_mlp(1, 1, shared=True)
    u = torch.randn(5, 12)
    out, _ = mlp(u)
    torch.testing.assert_close(out, mlp.dense(u) + mlp.shared(u))


def test_shared_expert_is_always_on():
    """out = routed mixture + shared SwiGLU(u) for every valid token."""
    mlp = make_mlp(4, 2, shared=True)
    u = torch.randn(11, 12)
    out, _ = mlp(u)
    shared = mlp.shared
    mlp.shared = None
    routed, _ = mlp(u)
    torch.testing.assert_close(out, routed + shared(u))


def test_gates_weight_the_experts():
    """k = E = 2 with renormalisation: out = sum_e softmax_e * SwiGLU_e(u)."""
    mlp = make_mlp(2, 2)
    u = torch.randn(6, 12)
    out, _ = mlp(u)
    probs = torch.softmax(u @ mlp.router.weight.T, -1)
    H = mlp.down.shape[-1]
    want = 0
    for e in range(2):
        h = u @ mlp.gate_up[e].T
        want = want + probs[:, e, None] * ((F.silu(h[:, :H]) * h[:, H:]) @ mlp.down[e].T)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_tokens", [1, 3, 40])  # 40 * k pairs exceed STEP_MAX_PAIRS: the grouped path
@pytest.mark.parametrize("E,k,shared", [(4, 2, False), (4, 2, True), (1, 1, False)])
def test_decode_through_forward_equals_forward(n_tokens, E, k, shared):
    """``forward(u, decode=True)`` (the decode entry) is ``forward(u)`` without router statistics."""
    mlp = make_mlp(E, k, shared)
    u = torch.randn(n_tokens, 12)
    want, _ = mlp(u)
    got, report = mlp(u, decode=True)
    assert report is None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, moe_mlp_reference(mlp, u) if E > 1 else want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("E,shared", [(1, False), (4, True)])
def test_bf16_weights_take_the_fp32_residual(E, shared):
    """Weights loaded in bf16 without autocast (``from_pretrained(dtype=bf16)``, what
    ``mossnet generate`` runs on CUDA) take fp32 tokens, dense and shared SwiGLU included, and
    agree with the fp32 layer to bf16 precision."""
    import copy

    mlp = make_mlp(E, min(2, E), shared)
    low = copy.deepcopy(mlp).to(torch.bfloat16)
    if E > 1:
        low.router.float()  # kept in fp32 by from_pretrained
    u = torch.randn(6, 12)
    for decode in (False, True):
        out, _ = low(u, decode=decode)
        assert max_rel(out.float(), mlp(u, decode=decode)[0]) < 3e-2
