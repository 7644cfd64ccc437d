"""The softmax top-k router (spec sections 2.1 and 4)."""

from __future__ import annotations

import math

import pytest
import torch

from mossnet.layers.router import Router


def make_router(E=4, k=2, renormalize=True, D=8):
    r = Router(D, E, k, renormalize)
    torch.nn.init.normal_(r.weight, std=0.5)
    return r


@pytest.mark.parametrize("E,k", [(4, 1), (4, 2), (4, 4), (6, 3)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_topk_and_gates(E, k, renormalize):
    r = make_router(E, k, renormalize)
    u = torch.randn(30, 8)
    out = r(u)
    probs = torch.softmax(u @ r.weight.T, -1)
    torch.testing.assert_close(out.probs, probs)
    torch.testing.assert_close(out.logits, u @ r.weight.T)
    top_p, top_i = probs.topk(k, dim=-1)
    assert torch.equal(out.top_idx, top_i)
    if k > 1 and renormalize:
        torch.testing.assert_close(out.top_gates, top_p / top_p.sum(-1, keepdim=True))
        torch.testing.assert_close(out.top_gates.sum(-1), torch.ones(30))
    else:  # with k = 1 the gate is pi itself (a renormalised gate would be the constant 1)
        torch.testing.assert_close(out.top_gates, top_p)
    dense = out.dense_gates(E)
    assert dense.shape == (30, E) and ((dense > 0).sum(-1) == k).all()
    torch.testing.assert_close(dense.gather(1, out.top_idx), out.top_gates)


def test_k1_gate_is_not_constant():
    """k = 1: the LM loss must reach the router through the gate."""
    r = make_router(4, 1, renormalize=True)
    u = torch.randn(10, 8)
    out = r(u)
    assert not torch.allclose(out.top_gates, torch.ones_like(out.top_gates))
    out.top_gates.sum().backward()
    assert r.weight.grad.abs().sum() > 0


def test_ties_go_to_the_lower_index():
    r = Router(8, 5, 3)
    torch.nn.init.zeros_(r.weight)  # every expert has the same probability
    out = r(torch.randn(4, 8))
    assert out.top_idx.tolist() == [[0, 1, 2]] * 4
    with torch.no_grad():
        r.weight[3] = 0.0
        r.weight[4] = 1.0  # expert 4 is best; the rest tie
    out = r(torch.ones(2, 8))
    assert out.top_idx.tolist() == [[4, 0, 1]] * 2


def test_fp32_under_bf16_input():
    r = make_router(4, 2)
    out = r(torch.randn(6, 8, dtype=torch.bfloat16))
    assert out.logits.dtype == torch.float32 and out.probs.dtype == torch.float32
    assert out.top_gates.dtype == torch.float32


def test_padding_gets_zero_gates():
    r = make_router(4, 2)
    valid = torch.tensor([True, False, True, False])
    out = r(torch.randn(4, 8), valid)
    assert (out.top_gates[~valid] == 0).all() and (out.top_gates[valid] > 0).all()


@pytest.mark.parametrize("padding", [True, False])
def test_losses_by_hand(padding):
    """L_aux = E * sum_e f_e P_e over valid tokens; L_z = mean logsumexp(logits)^2; and their
    gradients. Without padding (valid=None) the losses take a shorter path: same values."""
    E, k = 4, 2
    r = make_router(E, k)
    u = torch.randn(12, 8, generator=torch.Generator().manual_seed(4))
    valid = torch.rand(12, generator=torch.Generator().manual_seed(5)) > 0.3 if padding else None
    keep = valid if padding else torch.ones(12, dtype=torch.bool)
    out = r(u, valid)
    counts = torch.bincount(out.top_idx[keep].flatten(), minlength=E)
    aux, z = out.losses(counts)
    (d_aux,) = torch.autograd.grad(aux, r.weight, retain_graph=True)
    (d_z,) = torch.autograd.grad(z, r.weight)

    logits = u @ r.weight.T
    n = int(keep.sum())
    f = counts.float() / (k * n)
    want_aux = E * (f * torch.softmax(logits, -1)[keep].mean(0)).sum()
    want_z = torch.logsumexp(logits[keep], -1).pow(2).mean()
    torch.testing.assert_close(aux, want_aux)
    torch.testing.assert_close(z, want_z)
    torch.testing.assert_close(d_aux, torch.autograd.grad(want_aux, r.weight, retain_graph=True)[0])
    torch.testing.assert_close(d_z, torch.autograd.grad(want_z, r.weight)[0])


def test_aux_loss_is_one_at_perfect_balance():
    """Uniform probabilities and equal counts give L_aux = 1 exactly."""
    E, k = 4, 2
    r = Router(8, E, k)
    torch.nn.init.zeros_(r.weight)
    with torch.no_grad():
        out = r(torch.randn(8, 8))
    aux, z = out.losses(torch.full((E,), 8 * k // E))
    assert math.isclose(float(aux), 1.0, rel_tol=1e-6)
    assert math.isclose(float(z), math.log(E) ** 2, rel_tol=1e-6)
