"""Initialisation and calibration of the new parts of a converted layer (mossnet.convert.init),
each checked against an explicit computation rather than against the converter's own code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mossnet.convert.init import (
    CalibrationGrid, Z_BIAS, a_log_for_half_life, calibrate_layer, fit_norm_weights, head_readouts,
    init_new_parts, per_head_error,
)
from mossnet.convert.llama import mossnet_config_for
from mossnet.convert.pipeline import build_student
from mossnet.convert.report import capture_teacher, relative_error
from mossnet.layers.sequence_layout import SequenceLayout


def converted(teacher, k=None, state_update="all"):
    cfg = mossnet_config_for(teacher.config, k or teacher.config.num_attention_heads, state_update)
    return build_student(teacher, cfg, seed=0)


@pytest.fixture
def grad_off():
    with torch.no_grad():
        yield


def test_new_parts_start_as_documented(make_teacher, grad_off):
    teacher, _ = make_teacher(save=False)
    mixer = converted(teacher).model.layers[0].mixer
    P = mixer.head_dim
    assert (mixer.in_proj[:, :P] == 0).all() and (mixer.in_proj[:, -1] == 0).all()  # z rows, d row
    assert torch.allclose(F.silu(mixer.z_bias), torch.ones_like(mixer.z_bias), atol=1e-6)
    assert torch.allclose(F.softplus(mixer.dt_bias), torch.ones_like(mixer.dt_bias), atol=1e-6)
    assert (mixer.D == 0).all() and (mixer.conv_bias == 0).all()
    assert (mixer.conv_weight[..., :-1] == 0).all() and (mixer.conv_weight[..., -1] == 1).all()
    A = -torch.exp(mixer.A_log)
    assert torch.isfinite(mixer.A_log).all() and (torch.exp(A * 1.0) == 1.0).all()  # no decay in fp32
    assert (mixer.norm_weight == mixer.experts_per_token).all()
    assert (mixer.router.weight == 0).all()  # k = E: every gate exactly 1/k
    gates = mixer.router(torch.randn(5, teacher.config.hidden_size)).top_gates
    assert torch.equal(gates, torch.full_like(gates, 1 / mixer.experts_per_token))


def test_routed_router_starts_random(make_teacher, grad_off):
    teacher, _ = make_teacher(save=False)
    mixer = converted(teacher, k=2, state_update="routed").model.layers[0].mixer
    assert mixer.router.weight.abs().max() > 0  # zero logits would always pick experts 0 and 1
    top = mixer.router(torch.randn(64, teacher.config.hidden_size)).top_idx
    assert len(top.unique()) == mixer.n_experts


def test_half_lives():
    for half_life in (1.0, 7.0, 300.0):
        A = -math.exp(a_log_for_half_life(half_life))
        assert math.isclose(math.exp(A * half_life), 0.5, rel_tol=1e-12)
    assert torch.exp(-torch.exp(torch.tensor(a_log_for_half_life(math.inf)))) == 1.0
    assert math.isclose(Z_BIAS / (1 + math.exp(-Z_BIAS)), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("k,state_update", [(4, "all"), (2, "routed"), (1, "all")])
def test_head_readouts_are_what_the_layer_sums(make_teacher, grad_off, k, state_update):
    """o = sum_h W_o^h (w_h * r_h) with r from head_readouts, for any norm weights w; the
    layer's parameters are left as they were."""
    teacher, _ = make_teacher(save=False)
    mixer = converted(teacher, k, state_update).model.layers[0].mixer.double()
    mixer.norm_weight.normal_()
    before = {n: p.clone() for n, p in mixer.named_parameters()}
    u = torch.randn(2, 9, teacher.config.hidden_size, dtype=torch.float64)
    r = head_readouts(mixer, u)
    want = torch.einsum("btep,edp->btd", r * mixer.norm_weight, mixer.out_proj)
    got = mixer(u, SequenceLayout.build(2, 9))[0]
    assert float((got - want).abs().max() / want.abs().max()) < 1e-10
    assert all(torch.equal(p, before[n]) for n, p in mixer.named_parameters())
    if k < mixer.n_experts:
        assert ((r.abs().sum(-1) > 0).sum(-1) == k).all()  # k experts per token


def test_per_head_error_is_a_per_channel_least_squares(grad_off):
    r = torch.randn(3, 11, 2, 4, dtype=torch.float64)
    a = torch.randn(3, 11, 2, 4, dtype=torch.float64) + 0.5 * r
    errors = per_head_error(r, a)
    for h in range(2):
        rr, aa = r[:, :, h].reshape(-1, 4), a[:, :, h].reshape(-1, 4)
        residual = 0.0
        for c in range(4):
            w = torch.linalg.lstsq(rr[:, [c]], aa[:, [c]]).solution
            residual += float((rr[:, [c]] @ w - aa[:, [c]]).pow(2).sum())
        assert math.isclose(float(errors[h]), residual / float(aa.pow(2).sum()), rel_tol=1e-9)


def test_fit_norm_weights_recovers_achievable_weights(make_teacher, grad_off):
    """A target the layer can produce exactly (its own output under some norm weights w*) is
    fitted back to w*, through W_o and across heads."""
    teacher, _ = make_teacher(save=False)
    mixer = converted(teacher).model.layers[0].mixer.double()
    u = torch.randn(3, 17, teacher.config.hidden_size, dtype=torch.float64)
    w_star = torch.randn_like(mixer.norm_weight)
    mixer.norm_weight.copy_(w_star)
    target = mixer(u)[0]
    mixer.norm_weight.fill_(1.0)
    fit_norm_weights(mixer, head_readouts(mixer, u), target, ridge=1e-12)
    assert float((mixer.norm_weight - w_star).abs().max()) < 1e-6


def test_fit_norm_weights_is_the_least_squares_solution(make_teacher, grad_off):
    """Against torch.linalg.lstsq on the explicit design matrix of o(w) (ridge ~ 0)."""
    teacher, _ = make_teacher(save=False)
    mixer = converted(teacher).model.layers[1].mixer.double()
    E, P, D = mixer.n_experts, mixer.head_dim, teacher.config.hidden_size
    u = torch.randn(2, 23, D, dtype=torch.float64)
    target = torch.randn(2, 23, D, dtype=torch.float64)
    r = head_readouts(mixer, u).reshape(-1, E, P)
    # column (h, c) of the design: W_o^h[:, c] * r[t, h, c], one row per (token t, output d)
    columns = torch.einsum("edp,tep->tdep", mixer.out_proj, r).reshape(-1, E * P)  # (t D, E P)
    want = torch.linalg.lstsq(columns, target.reshape(-1, 1)).solution.view(E, P)
    fit_norm_weights(mixer, r.view(2, 23, E, P), target, ridge=1e-12)
    assert float((mixer.norm_weight - want).abs().max() / want.abs().max()) < 1e-6


def test_never_routed_expert_keeps_the_gate_compensation(make_teacher, grad_off):
    teacher, _ = make_teacher(save=False)
    mixer = converted(teacher, k=2, state_update="routed").model.layers[0].mixer.double()
    mixer.router.weight.zero_()
    mixer.router.weight[3] = -100.0 * torch.ones(teacher.config.hidden_size)  # expert 3 never chosen
    u = torch.randn(2, 13, teacher.config.hidden_size, dtype=torch.float64).abs()
    r = head_readouts(mixer, u)
    assert (r[:, :, 3] == 0).all()
    fit_norm_weights(mixer, r, torch.randn(2, 13, teacher.config.hidden_size, dtype=torch.float64), ridge=1e-3)
    assert torch.allclose(mixer.norm_weight[3], torch.full_like(mixer.norm_weight[3], 2.0))
    assert torch.isfinite(mixer.norm_weight).all()


def test_calibration_lowers_the_error_and_picks_from_the_grid(make_teacher, grad_off):
    teacher, _ = make_teacher(save=False)
    student = converted(teacher)
    ids = torch.randint(0, teacher.config.vocab_size, (3, 40))
    acts = capture_teacher(teacher, ids, heads=True)
    grid = CalibrationGrid(half_lives=(2.0, math.inf), feature_rms=(None, 0.1))
    for i, block in enumerate(student.model.layers):
        u = block.mixer_norm(acts.inputs[i])
        before = float(relative_error(block.mixer(u)[0], acts.attention[i]))
        choice = calibrate_layer(block.mixer, u, acts.heads[i], acts.attention[i], grid)
        after = float(relative_error(block.mixer(u)[0], acts.attention[i]))
        assert math.isclose(after, choice.error, rel_tol=1e-5)
        assert after < before and after < 1.0
        assert set(choice.half_life) <= {2.0, math.inf} and set(choice.feature_rms) <= {None, 0.1}
        for h, half_life in enumerate(choice.half_life):
            assert math.isclose(float(block.mixer.A_log[h]), a_log_for_half_life(half_life), rel_tol=1e-6)
