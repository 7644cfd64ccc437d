"""Spec section 7's switches in the production MoSSE against the masked-dense reference
(``mosse_reference.py``): ``ssm_conv_placement="shared"``, ``ssm_share_bc`` and both, routed and
"all", with padding (left, right, a hole), packed documents and carried states in and out;
outputs, router reports, final states and every gradient, on random inputs of odd lengths."""

from __future__ import annotations

import os

import pytest
import torch

from mossnet.layers.mosse_rules import conv_window_shape
from mossnet.layers.sequence_layout import SequenceLayout
from mosse_reference import full_sequence_conv, mosse_reference
from test_mosse_vs_reference import (TRITON_DEVICE, assert_matches_reference, assert_model_matches_reference_layers,
                                     make_layer, padded)

SWITCHES = {
    "shared_conv": dict(ssm_conv_placement="shared"),
    "share_bc": dict(ssm_share_bc=True),
    "both": dict(ssm_conv_placement="shared", ssm_share_bc=True),
}


def switched_layer(tiny_config, switch, E=4, k=2, dtype=torch.float64, **kw):
    layer = make_layer(tiny_config, E, k, dtype=dtype, **SWITCHES[switch], **kw)
    layer.config_for_test = tiny_config(d_model=12, ssm_experts=E, ssm_top_k=k, ssm_head_dim=6, ssm_state_dim=5,
                                        **SWITCHES[switch], **kw)
    return layer


def random_states(layer, batch, dtype=torch.float64):
    """Carried (conv, ssm) states in the layer's own layout."""
    window = conv_window_shape(layer.config_for_test)
    E, P, N = layer.n_experts, layer.head_dim, layer.state_dim
    return torch.randn(batch, *window, dtype=dtype), torch.randn(batch, E, N, P, dtype=dtype)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_parameters_of_each_switch(tiny_config, switch):
    """Which tensors exist, and their shapes (d_model 12, E 4, P 6, N 5, K 4)."""
    layer = switched_layer(tiny_config, switch)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    share_bc = SWITCHES[switch].get("ssm_share_bc", False)
    shared_conv = SWITCHES[switch].get("ssm_conv_placement") == "shared"
    assert shapes["in_proj"] == ((4, 13, 12) if share_bc else (4, 23, 12))
    assert ("conv_weight" in shapes) == (not shared_conv)
    if not shared_conv:
        assert shapes["conv_weight"] == (4, 6, 4) and shapes["conv_bias"] == (4, 6)
    assert shapes["shared_conv_weight"] == ((12, 4) if shared_conv else (10, 4))
    assert shapes["shared_conv_bias"] == ((12,) if shared_conv else (10,))
    assert shapes.get("bc_proj") == ((10, 12) if share_bc else None)


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_padding_and_carried_states_match_reference(tiny_config, switch, state_update):
    """Padding enters no conv (the full-sequence one included): zero output and input gradient
    at padding, and its values do not matter; carried windows and SSM states enter and leave."""
    layer = switched_layer(tiny_config, switch, state_update=state_update)
    batch, T = 3, 21
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    valid = padded(batch, T)
    layout = SequenceLayout.build(batch, T, valid.long())
    o, grads = assert_matches_reference(layer, u, layout, random_states(layer, batch), return_states=True,
                                        impl="chunked")
    assert (o[~valid] == 0).all() and (grads["input"][~valid] == 0).all()
    assert grads["shared_conv_weight"].abs().max() > 0 and grads["conv_state"].abs().max() > 0
    u2 = torch.where(valid[..., None], u, torch.randn_like(u) * 10)
    torch.testing.assert_close(layer(u2, layout)[0], layer(u, layout)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_packed_documents_match_reference(tiny_config, switch):
    """position_ids restarting at 0 reset the full-sequence conv too; padding inside a row."""
    layer = switched_layer(tiny_config, switch)
    batch, T = 2, 23
    position_ids = torch.cat([torch.arange(9), torch.arange(1), torch.arange(13)])[None].repeat(batch, 1)
    position_ids[1] = torch.cat([torch.arange(4), torch.arange(19)])
    valid = torch.ones(batch, T, dtype=torch.long)
    valid[1, :2] = 0
    layout = SequenceLayout.build(batch, T, valid, position_ids)
    assert_matches_reference(layer, torch.randn(batch, T, 12, dtype=torch.float64), layout,
                             random_states(layer, batch), return_states=True)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_fp32_chunked_matches_reference(tiny_config, switch):
    layer = switched_layer(tiny_config, switch, dtype=torch.float32)
    assert_matches_reference(layer, torch.randn(3, 37, 12), tol=1e-4, impl="chunked")


@pytest.mark.parametrize("switch", ["shared_conv", "share_bc"])
def test_single_expert_and_k_equals_e(tiny_config, switch):
    for E, k in ((1, 1), (3, 3)):
        layer = switched_layer(tiny_config, switch, E=E, k=k)
        assert_matches_reference(layer, torch.randn(2, 13, 12, dtype=torch.float64), impl="chunked")


def test_shared_conv_sees_true_neighbours_under_routing(tiny_config):
    """What the switch is for: with the shared conv, expert e's x at token t mixes u at t-1
    even when t-1 went to other experts (its routed conv would never see it)."""
    layer = switched_layer(tiny_config, "shared_conv")
    u = torch.randn(1, 9, 12, dtype=torch.float64)
    layout = SequenceLayout.build(1, 9)
    every = torch.ones(1, 9, dtype=torch.bool)
    conv_u, _ = full_sequence_conv(u, layer.shared_conv_weight, layer.shared_conv_bias, every)
    u2 = u.clone()
    u2[0, 4] += 1.0  # only token 4 changes: conv(u) changes at tokens 4..7, and so does the output
    conv_u2, _ = full_sequence_conv(u2, layer.shared_conv_weight, layer.shared_conv_bias, every)
    changed = (conv_u2 - conv_u).abs().amax(-1)[0] > 0
    assert changed.tolist() == [False] * 4 + [True] * 4 + [False]
    o, o2 = layer(u, layout)[0], layer(u2, layout)[0]
    assert ((o2 - o).abs().amax(-1)[0, 4:] > 0).all() and torch.equal(o2[0, :4], o[0, :4])
    ref = mosse_reference(layer, u, layout)[0]
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_model_loss_and_grads_match_reference_layers(make_model, state_update):
    """All three switches on (shared conv, shared B/C, no MLP): every MoSSE of the model
    replaced by the reference gives the same loss, aux loss and gradients, padding included."""
    model = make_model(chunk_size=16, state_update=state_update, ssm_conv_placement="shared", ssm_share_bc=True,
                       mlp_experts=0).train()
    assert_model_matches_reference_layers(model, "shared_conv_weight")


@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs CUDA, or TRITON_INTERPRET=1 for the Triton interpreter")
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_triton_scan_matches_reference(tiny_config, switch):
    """The switches change what feeds the scan, not the scan: the Triton path serves them."""
    pytest.importorskip("triton")
    os.environ.setdefault("MOSSNET_TRITON_AUTOTUNE", "0")
    layer = switched_layer(tiny_config, switch, dtype=torch.float32).to(TRITON_DEVICE)
    batch, T = 2, 40
    u = torch.randn(batch, T, 12, device=TRITON_DEVICE)
    valid = padded(batch, T).long().to(TRITON_DEVICE)
    states = tuple(s.to(TRITON_DEVICE) for s in random_states(layer, batch, torch.float32))
    assert_matches_reference(layer, u, SequenceLayout.build(batch, T, valid), states, return_states=True,
                             tol=1e-4, impl="triton")
