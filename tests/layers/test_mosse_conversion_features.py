"""The two MoSSE features conversion from attention relies on (spec section 8), checked in ways
that complement test_mosse_vs_reference.py:

* ``ssm_z_bias`` equals what it must be: a bias is a weight column on a constant-1 input channel,
  so a layer one input channel wider, without the feature, fed [u, 1], gives the same output, in
  the forward and in one-token decode.
* zero decay (A = 0, ``A_log = -inf``) never forgets: at the op level the scan is a plain
  cumulative sum, and the layer's returned state after T tokens is sum_s dt_s B_s x_s^T.
"""

from __future__ import annotations

import math

import pytest
import torch

from mossnet.layers.mosse import MoSSE
from mossnet.layers.sequence_layout import SequenceLayout
from mossnet.ops.mosse import mosse_scan
from mosse_helpers import randomize_mosse_

D_MODEL = 12


def make_layer(tiny_config, E=4, k=2, d_model=D_MODEL, **kw):
    cfg = tiny_config(d_model=d_model, ssm_experts=E, ssm_top_k=k, ssm_head_dim=6, ssm_state_dim=5, **kw)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.0)
    return layer.double()


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def zero_states(layer, batch):
    E, P, N, K = layer.n_experts, layer.head_dim, layer.state_dim, layer.conv_kernel
    return (torch.zeros(batch, E, K - 1, P + 2 * N, dtype=torch.float64),
            torch.zeros(batch, E, N, P, dtype=torch.float64))


def run(layer, u, path):
    """The layer's output over u (batch, T, D): one forward, or token by token through decode."""
    if path == "forward":
        return layer(u, SequenceLayout.build(u.shape[0], u.shape[1]))[0]
    conv, ssm = zero_states(layer, u.shape[0])
    return torch.cat([layer(u[:, t:t + 1], None, conv, ssm, decode=True)[0] for t in range(u.shape[1])], dim=1)


def widen_with_constant_channel(layer, tiny_config, state_update):
    """A layer without z bias, one input channel wider, computing ``layer`` on [u, 1]: the z
    rows of the new input column hold the bias; every other new weight is 0."""
    wide = make_layer(tiny_config, layer.n_experts, layer.experts_per_token, D_MODEL + 1, state_update=state_update)
    assert wide.z_bias is None
    with torch.no_grad():
        for name in ("conv_weight", "conv_bias", "dt_bias", "A_log", "D", "norm_weight"):
            getattr(wide, name).copy_(getattr(layer, name))
        wide.in_proj.zero_()
        wide.in_proj[:, :, :D_MODEL] = layer.in_proj
        wide.in_proj[:, : layer.head_dim, D_MODEL] = layer.z_bias
        wide.out_proj.zero_()
        wide.out_proj[:, :D_MODEL] = layer.out_proj
        if layer.router is not None:
            wide.router.weight.zero_()
            wide.router.weight[:, :D_MODEL] = layer.router.weight
    return wide


@pytest.mark.parametrize("state_update,E,k", [("routed", 4, 2), ("routed", 1, 1), ("all", 3, 3), ("all", 4, 2)])
@pytest.mark.parametrize("path", ["forward", "decode"])
def test_z_bias_equals_a_weight_on_a_constant_channel(tiny_config, state_update, E, k, path):
    layer = make_layer(tiny_config, E, k, ssm_z_bias=True, state_update=state_update)
    with torch.no_grad():
        layer.z_bias.normal_(std=2.0)
    wide = widen_with_constant_channel(layer, tiny_config, state_update)
    u = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    u1 = torch.cat([u, torch.ones(2, 11, 1, dtype=torch.float64)], dim=-1)
    want = run(wide, u1, "forward")
    assert rel_err(run(layer, u, path), want[..., :D_MODEL]) < 1e-10
    assert want[..., D_MODEL].abs().max() == 0
    with torch.no_grad():  # the bias matters: the comparison above is not trivially true
        layer.z_bias.zero_()
    assert rel_err(run(layer, u, path), want[..., :D_MODEL]) > 1e-3


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_scan_with_zero_decay_is_a_plain_cumulative_sum(impl):
    """A = 0: y_t = sum_{s<=t} (C_t . B_s) dt_s x_s, with no decay at all."""
    batch, T, E, P, N = 2, 21, 3, 4, 5
    x, B, C = (torch.randn(batch, T, E, d, dtype=torch.float64) for d in (P, N, N))
    dt = torch.rand(batch, T, E, dtype=torch.float64) * 3
    A = torch.tensor([0.0, -0.0, -0.5], dtype=torch.float64)
    y, _ = mosse_scan(x, dt, A, B, C, impl=impl, chunk_size=8)
    scores = torch.einsum("bten,bsen->bets", C, B) * dt.permute(0, 2, 1)[:, :, None, :]
    want = torch.einsum("bets,bsep->btep", scores.tril(), x)
    assert rel_err(y[:, :, :2], want[:, :, :2]) < 1e-12
    assert rel_err(y[:, :, 2], want[:, :, 2]) > 1e-3  # the decaying expert differs


def test_zero_decay_state_never_forgets(tiny_config):
    """A = 0 and dt = 1 over 300 tokens: the layer's returned SSM state is sum_s B_s x_s^T."""
    layer = make_layer(tiny_config, 1, 1, state_update="all")
    with torch.no_grad():
        layer.A_log.fill_(float("-inf"))
        layer.in_proj[:, -1].zero_()  # dt row
        layer.dt_bias.fill_(math.log(math.expm1(1.0)))  # softplus^-1(1)
    u = torch.randn(1, 300, D_MODEL, dtype=torch.float64)
    captured = {}
    scan = layer._scan

    def spy(x, B, C, dt, *args, **kwargs):
        captured.update(x=x, B=B, dt=dt)
        return scan(x, B, C, dt, *args, **kwargs)

    layer._scan = spy
    try:
        _, _, (_, final) = layer(u, SequenceLayout.build(1, 300), *zero_states(layer, 1), return_states=True)
    finally:
        del layer._scan
    assert torch.allclose(captured["dt"], torch.ones_like(captured["dt"]), rtol=1e-12, atol=0)
    want = captured["B"].T @ captured["x"]  # (N, P): every token's B x^T, undecayed
    assert torch.isfinite(final).all()
    assert rel_err(final[0, 0], want) < 1e-10
