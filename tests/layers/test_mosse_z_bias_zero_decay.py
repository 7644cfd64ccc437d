"""Two MoSSE features that conversion from attention needs (spec section 8):

* ``ssm_z_bias``: a per-expert bias on z before SiLU, in every execution path (dense, compact,
  one-token decode). Checked against a layer *without* the feature: a bias is what a weight
  column on a constant-1 input channel computes, so a layer one input channel wider, fed
  [u, 1], must give the same output.
* zero decay: A_log = -inf (A = 0) gives finite, exact results in every path, forward and
  gradients, including the compact layout that folds |A_e| into dt.
"""

from __future__ import annotations

import math

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.errors import ConfigError
from mossnet.layers.mosse import MoSSE
from mossnet.layers.sequence_layout import SequenceLayout
from mossnet.ops.mosse import mosse_scan
from mosse_helpers import randomize_mosse_

D_MODEL = 12


def make_layer(tiny_config, E=4, k=2, d_model=D_MODEL, dtype=torch.float64, **kw):
    cfg = tiny_config(d_model=d_model, ssm_experts=E, ssm_top_k=k, ssm_head_dim=6, ssm_state_dim=5,
                      chunk_size=8, **kw)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.0)
    return layer.to(dtype)


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def decode_all(layer, u):
    """Token by token through ``forward(decode=True)`` from zero states: (batch, T, D)."""
    batch, T, _ = u.shape
    E, P, N, K = layer.n_experts, layer.head_dim, layer.state_dim, layer.conv_kernel
    conv = torch.zeros(batch, E, K - 1, P + 2 * N, dtype=u.dtype)
    ssm = torch.zeros(batch, E, N, P, dtype=u.dtype)
    return torch.cat([layer(u[:, t : t + 1], None, conv, ssm, decode=True)[0] for t in range(T)], dim=1)


def run(layer, u, path):
    """The layer's output along one execution path."""
    if path == "decode":
        return decode_all(layer, u)
    layer.compact_routing = path == "compact"
    return layer(u, SequenceLayout.build(u.shape[0], u.shape[1]))[0]


# ----------------------------------------------------------------------------- ssm_z_bias
def test_z_bias_config_field():
    assert MossNetConfig().ssm_z_bias is False
    assert MoSSE(MossNetConfig()).z_bias is None
    layer = MoSSE(MossNetConfig(ssm_z_bias=True))
    assert layer.z_bias.shape == (layer.n_experts, layer.head_dim)
    with pytest.raises(ConfigError, match="ssm_z_bias"):
        MossNetConfig(ssm_z_bias="yes")


def test_z_bias_is_zero_after_init_and_reloads(tmp_path, tiny_config):
    model = MossNetForCausalLM(tiny_config(ssm_z_bias=True))
    biases = [b.mixer.z_bias for b in model.model.layers]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    with torch.no_grad():
        for b in biases:
            b.normal_()
    model.save_pretrained(tmp_path)
    again = MossNetForCausalLM.from_pretrained(tmp_path)
    for ours, theirs in zip(biases, (b.mixer.z_bias for b in again.model.layers)):
        assert torch.equal(ours, theirs)


def widen_with_constant_channel(layer, tiny_config, state_update):
    """A layer without z bias, one input channel wider, computing ``layer`` on [u, 1]: the z
    rows of the new input column hold the bias; every other new weight is 0."""
    E, k = layer.n_experts, layer.top_k
    wide = make_layer(tiny_config, E, k, d_model=D_MODEL + 1, state_update=state_update)
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
@pytest.mark.parametrize("path", ["dense", "compact", "decode"])
def test_z_bias_equals_a_weight_on_a_constant_channel(tiny_config, state_update, E, k, path):
    layer = make_layer(tiny_config, E, k, ssm_z_bias=True, state_update=state_update)
    with torch.no_grad():
        layer.z_bias.normal_(std=2.0)
    wide = widen_with_constant_channel(layer, tiny_config, state_update)
    u = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    u1 = torch.cat([u, torch.ones(2, 11, 1, dtype=torch.float64)], dim=-1)
    o = run(layer, u, path)
    want = run(wide, u1, "dense")
    assert rel_err(o, want[..., :D_MODEL]) < 1e-10
    assert want[..., D_MODEL].abs().max() == 0
    # The bias matters (the check above is not trivially true), and it gets a gradient.
    with torch.no_grad():
        layer.z_bias.zero_()
    assert rel_err(run(layer, u, path), want[..., :D_MODEL]) > 1e-3
    with torch.no_grad():
        layer.z_bias.normal_(std=2.0)
    if path != "decode":
        layer.zero_grad()
        run(layer, u, path).square().sum().backward()
        assert layer.z_bias.grad is not None and layer.z_bias.grad.abs().max() > 0


def test_z_bias_counts_as_an_expert_parameter(tiny_config):
    from mossnet.models.mossnet.parameter_count import count_parameters

    plain = count_parameters(MossNetForCausalLM(tiny_config()))
    biased = count_parameters(MossNetForCausalLM(tiny_config(ssm_z_bias=True)))
    cfg = tiny_config()
    extra = cfg.n_layers * cfg.ssm_experts * cfg.ssm_head_dim
    assert biased["total"] - plain["total"] == extra
    assert biased["active"] - plain["active"] == extra * cfg.ssm_top_k // cfg.ssm_experts


# ----------------------------------------------------------------------------- zero decay
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


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("E,k", [(4, 2), (4, 1), (3, 3)])
def test_zero_decay_is_finite_and_agrees_on_every_path(tiny_config, dtype, tol, E, k):
    """A_log = -inf on some experts: the compact layout (which folds |A_e| into dt and divides
    by it) equals the dense layout, where A = 0 enters the scan as is; decode equals both;
    forward and every gradient are finite."""
    layer = make_layer(tiny_config, E, k, dtype=dtype)
    with torch.no_grad():
        layer.A_log[: E - 1] = float("-inf")  # the last expert keeps a decay
        layer.dt_bias.fill_(1.0)  # large steps: any residual decay would show
    u = torch.randn(2, 37, D_MODEL, dtype=dtype)
    weight = torch.randn(2, 37, D_MODEL, dtype=dtype)
    outs, grads = {}, {}
    for path in ("dense", "compact"):
        layer.zero_grad(set_to_none=True)
        uu = u.clone().requires_grad_(True)
        o = run(layer, uu, path)
        (o * weight).sum().backward()
        outs[path] = o.detach()
        grads[path] = {n: p.grad for n, p in layer.named_parameters()} | {"input": uu.grad}
        assert torch.isfinite(o).all()
        for name, g in grads[path].items():
            assert g is None or torch.isfinite(g).all(), (path, name)
    assert rel_err(outs["compact"], outs["dense"]) < tol
    for name, g in grads["dense"].items():
        if g is not None and g.abs().max() > 0:
            assert rel_err(grads["compact"][name], g) < tol, name
    with torch.no_grad():
        assert rel_err(run(layer, u, "decode"), outs["dense"]) < tol


def test_zero_decay_state_never_forgets(tiny_config):
    """A = 0 with dt = 1 and a single expert: the SSM state after T tokens is the plain sum of
    B_s x_s^T (nothing decays), read through the layer's own returned state."""
    layer = make_layer(tiny_config, 1, 1, state_update="all")
    with torch.no_grad():
        layer.A_log.fill_(float("-inf"))
        layer.in_proj[:, -1].zero_()  # d row
        layer.dt_bias.fill_(math.log(math.expm1(1.0)))  # softplus^-1(1)
    u = torch.randn(1, 300, D_MODEL, dtype=torch.float64)
    E, P, N, K = 1, layer.head_dim, layer.state_dim, layer.conv_kernel
    conv = torch.zeros(1, E, K - 1, P + 2 * N, dtype=torch.float64)
    ssm = torch.zeros(1, E, N, P, dtype=torch.float64)
    captured = {}
    import mossnet.layers.mosse as mosse_module

    real = mosse_module.mosse_scan

    def spy(x, dt, A, B, C, *args, **kwargs):
        captured.update(x=x, B=B, dt=dt)
        return real(x, dt, A, B, C, *args, **kwargs)

    mosse_module.mosse_scan = spy
    try:
        _, _, (_, final) = layer(u, SequenceLayout.build(1, 300), conv, ssm, return_states=True)
    finally:
        mosse_module.mosse_scan = real
    assert torch.allclose(captured["dt"], torch.ones_like(captured["dt"]), rtol=1e-12, atol=0)
    want = torch.einsum("btn,btp->np", captured["B"][:, :, 0], captured["x"][:, :, 0])
    assert rel_err(final[0, 0], want) < 1e-10
