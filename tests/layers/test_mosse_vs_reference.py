"""The production MoSSE (one forward, compact varlen layout) against the masked-dense reference
(``mosse_reference.py``): outputs, router reports, carried-out states, and every gradient
(parameters, input, carried-in states), on random inputs; odd lengths (several scan chunks,
segment boundaries mid-chunk), k = E, a single expert, ``state_update`` routed and all, padding,
packed documents, carried states, zero decay, the z bias; and at model level."""

from __future__ import annotations

import os

import pytest
import torch

from mossnet import MossNetForCausalLM
from mossnet.execution import ExecutionPolicy
from mossnet.layers.mosse import MoSSE
from mossnet.layers.sequence_layout import SequenceLayout
from kernel_device import DEVICE as TRITON_DEVICE
from mosse_helpers import randomize_mosse_
from mosse_reference import mosse_reference


def make_layer(tiny_config, E, k, dtype=torch.float64, **kw):
    cfg = tiny_config(d_model=12, ssm_experts=E, ssm_top_k=k, ssm_head_dim=6, ssm_state_dim=5, **kw)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.5)
    return layer.to(dtype)


def random_states(layer, batch, dtype=torch.float64):
    E, P, N, K = layer.n_experts, layer.head_dim, layer.state_dim, layer.conv_kernel
    return torch.randn(batch, E, K - 1, P + 2 * N, dtype=dtype), torch.randn(batch, E, N, P, dtype=dtype)


def forward_and_grads(layer, u, layout, states=None, return_states=False, reference=False, impl="reference"):
    """o, report, new states, and the gradients of a random scalar of (o, aux, z, new states)
    w.r.t. u, the carried-in states and every parameter (None where unused)."""
    u = u.detach().clone().requires_grad_(True)
    conv, ssm = (None, None) if states is None else (s.detach().clone().requires_grad_(True) for s in states)
    if reference:
        o, _, report, new = mosse_reference(layer, u, layout, conv, ssm, return_states)
    else:
        # The PyTorch router and read-out, as the reference uses: the fused kernels have their own
        # tests (tests/layers/test_fused_layers.py), and the router statistics compare bit-exactly.
        policy = ExecutionPolicy(scan_impl=impl, chunk_size=16, fused_ops="reference")
        o, report, new = layer(u, layout, conv, ssm, return_states, policy=policy)
    gen = torch.Generator().manual_seed(7)
    loss = (o * torch.randn(o.shape, dtype=o.dtype, generator=gen).to(o.device)).sum()
    if report is not None:
        loss = loss + 0.3 * report.aux + 0.1 * report.z
    for s in new or ():
        loss = loss + (s * torch.randn(s.shape, dtype=s.dtype, generator=gen).to(s.device)).sum()
    leaves = {"input": u, "conv_state": conv, "ssm_state": ssm, **dict(layer.named_parameters())}
    used = {name: t for name, t in leaves.items() if t is not None}
    grads = dict(zip(used, torch.autograd.grad(loss, list(used.values()), allow_unused=True)))
    return o.detach(), report, new, grads


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_matches_reference(layer, u, layout=None, states=None, return_states=False, tol=1e-10, impl="reference"):
    layout = layout if layout is not None else SequenceLayout.build(u.shape[0], u.shape[1])
    o, rep, new, grads = forward_and_grads(layer, u, layout, states, return_states, impl=impl)
    o_r, rep_r, new_r, grads_r = forward_and_grads(layer, u, layout, states, return_states, reference=True)
    assert o.abs().max() > 0
    assert rel_err(o, o_r) < tol
    if rep_r is None:
        assert rep is None
    else:  # the router and its statistics do not depend on the layout at all
        assert torch.equal(rep.load, rep_r.load) and torch.equal(rep.logits, rep_r.logits)
        assert torch.equal(rep.aux, rep_r.aux) and torch.equal(rep.z, rep_r.z)
    assert (new is None) == (new_r is None)
    for a, b in zip(new or (), new_r or ()):
        assert rel_err(a, b) < tol
    assert grads.keys() == grads_r.keys()
    for name, want in grads_r.items():
        got = grads[name]
        if want is None:
            assert got is None, name
            continue
        assert got is not None and torch.isfinite(got).all(), name
        if want.abs().max() == 0:
            # e.g. A_log at T = 1 (the decay never acts), where the fold's rate in dt' and in
            # 1/rate cancel only up to rounding: zero up to the tolerance.
            assert got.abs().max() < tol, name
        else:
            assert rel_err(got, want) < tol, (name, rel_err(got, want))
    return o, grads


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("E,k", [(4, 2), (4, 1), (3, 3), (1, 1)])
@pytest.mark.parametrize("T", [1, 7, 33, 70])
def test_matches_reference_fp64(tiny_config, state_update, E, k, T):
    layer = make_layer(tiny_config, E, k, state_update=state_update)
    assert_matches_reference(layer, torch.randn(2, T, 12, dtype=torch.float64))


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("E,k", [(4, 2), (3, 3)])
def test_matches_reference_fp32(tiny_config, state_update, E, k):
    layer = make_layer(tiny_config, E, k, dtype=torch.float32, state_update=state_update)
    assert_matches_reference(layer, torch.randn(3, 37, 12), tol=1e-4, impl="chunked")


def padded(batch, T):
    valid = torch.ones(batch, T, dtype=torch.bool)
    valid[0, :5] = False  # left padding
    valid[1, 13:] = False  # right padding
    if batch > 2:
        valid[2, 7:9] = False  # a hole
    return valid


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("E,k", [(4, 2), (3, 3), (1, 1)])
@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_padding(tiny_config, state_update, E, k, impl):
    """Padding tokens are routed nowhere: their rows form trailing segments that no expert's
    conv or scan sees, and their output and input gradient are 0."""
    layer = make_layer(tiny_config, E, k, state_update=state_update)
    batch, T = 3, 21
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    valid = padded(batch, T)
    layout = SequenceLayout.build(batch, T, valid.long())
    o, grads = assert_matches_reference(layer, u, layout, impl=impl)
    assert (o[~valid] == 0).all() and (grads["input"][~valid] == 0).all()
    u2 = torch.where(valid[..., None], u, torch.randn_like(u) * 10)  # the padded values do not matter
    o2 = layer(u2, layout, policy=ExecutionPolicy(scan_impl=impl))[0]
    torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("with_padding", [False, True])
def test_carried_states_in_and_out(tiny_config, state_update, with_padding):
    """Chunked prefill: carried conv windows and SSM states enter per segment and leave per
    segment, forward and gradients (through the carried-in states too)."""
    layer = make_layer(tiny_config, 4, 2, state_update=state_update)
    batch, T = 3, 19
    valid = padded(batch, T).long() if with_padding else None
    layout = SequenceLayout.build(batch, T, valid)
    assert_matches_reference(layer, torch.randn(batch, T, 12, dtype=torch.float64), layout,
                             random_states(layer, batch), return_states=True)


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("with_states", [False, True])
def test_packed_documents(tiny_config, state_update, with_states):
    """position_ids restarting at 0: each document is its own segment per expert; the first
    continues from the carried state, the row's state comes from its last; padding inside."""
    layer = make_layer(tiny_config, 4, 2, state_update=state_update)
    batch, T = 2, 23
    position_ids = torch.cat([torch.arange(9), torch.arange(1), torch.arange(13)])[None].repeat(batch, 1)
    position_ids[1] = torch.cat([torch.arange(4), torch.arange(19)])
    valid = torch.ones(batch, T, dtype=torch.long)
    valid[1, :2] = 0
    layout = SequenceLayout.build(batch, T, valid, position_ids)
    states = random_states(layer, batch) if with_states else None
    assert_matches_reference(layer, torch.randn(batch, T, 12, dtype=torch.float64), layout, states,
                             return_states=with_states)


def test_fully_padded_row_and_empty_segments(tiny_config):
    """Expert 3 gets no token at all, expert 2 none in row 0, and row 2 is all padding: their
    segments are empty and sit between non-empty ones in the segment table."""
    E, k = 4, 2
    layer = make_layer(tiny_config, E, k)
    batch, T = 3, 33
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    u[:, :, 0] = 3.0
    u[0, :, 1] = 3.0
    with torch.no_grad():
        layer.router.weight[:, :2] = 0.0
        layer.router.weight[3, 0] = -10.0  # never chosen
        layer.router.weight[2, 1] = -10.0  # never chosen in row 0 (the only row with u[..., 1] != 0)
        layer.router.weight[2, 0] = 1.0  # often chosen elsewhere
    top = layer.router(u.reshape(-1, 12)).top_idx.view(batch, T, k)
    assert not (top == 3).any() and not (top[0] == 2).any() and (top[1:] == 2).any()
    valid = torch.ones(batch, T, dtype=torch.long)
    valid[2] = 0
    _, grads = assert_matches_reference(layer, u, SequenceLayout.build(batch, T, valid), random_states(layer, batch),
                                        return_states=True)
    assert grads["in_proj"][3].abs().max() == 0 and grads["in_proj"][2].abs().max() > 0


@pytest.mark.parametrize("state_update", ["routed", "all"])
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_zero_decay_is_exact_and_finite(tiny_config, state_update, impl):
    """A = 0 (A_log = -inf) on some experts: the compact fold (which divides by the decay rate)
    stays exact and finite, forward and gradients, with and without carried states; the
    A_log gradient of a zero-decay expert is exactly 0."""
    layer = make_layer(tiny_config, 4, 2, state_update=state_update)
    with torch.no_grad():
        layer.A_log[1] = float("-inf")
        layer.A_log[3] = float("-inf")
    batch, T = 2, 29
    layout = SequenceLayout.build(batch, T, padded(batch, T).long())
    _, grads = assert_matches_reference(layer, torch.randn(batch, T, 12, dtype=torch.float64), layout,
                                        random_states(layer, batch), return_states=True, impl=impl)
    assert grads["A_log"][1] == 0 and grads["A_log"][3] == 0 and grads["A_log"][0] != 0


def test_zero_decay_state_is_a_plain_sum(tiny_config):
    """With A = 0 an expert's state is exactly S_0 + sum_t dt_t B_t x_t^T: no decay at all."""
    layer = make_layer(tiny_config, 1, 1)
    with torch.no_grad():
        layer.A_log.fill_(float("-inf"))
    u = torch.randn(1, 40, 12, dtype=torch.float64)
    conv0, ssm0 = random_states(layer, 1)
    o, _, (_, ssm1) = layer(u, None, conv0, ssm0, return_states=True)
    _, _, _, (_, ssm_ref) = mosse_reference(layer, u, SequenceLayout.build(1, 40), conv0, ssm0, True)
    assert torch.isfinite(o).all() and rel_err(ssm1, ssm_ref) < 1e-12
    assert rel_err(ssm_ref - ssm0, ssm_ref) > 1e-3  # the state did move


def test_z_bias(tiny_config):
    """ssm_z_bias: a zero-initialised (E, P) parameter; with W_z = 0 the gate is SiLU(bias)."""
    layer = make_layer(tiny_config, 4, 2, ssm_z_bias=True)
    assert layer.z_bias.shape == (4, 6)
    with torch.no_grad():
        layer.z_bias.normal_()
    batch, T = 2, 17
    layout = SequenceLayout.build(batch, T, padded(batch, T).long())
    _, grads = assert_matches_reference(layer, torch.randn(batch, T, 12, dtype=torch.float64), layout,
                                        random_states(layer, batch), return_states=True)
    assert grads["z_bias"].abs().max() > 0
    assert make_layer(tiny_config, 4, 2).z_bias is None
    fresh = MoSSE(tiny_config(ssm_z_bias=True))
    fresh.reset_parameters(tiny_config(ssm_z_bias=True))
    assert (fresh.z_bias == 0).all()


@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_model_loss_and_grads_match_reference_layers(make_model, state_update):
    """Every MoSSE of a model replaced by the reference: the same loss, aux loss and gradients."""
    assert_model_matches_reference_layers(make_model(chunk_size=16, state_update=state_update).train(),
                                          "mixer.in_proj")


def assert_model_matches_reference_layers(model, some_gradient: str):
    """Every MoSSE of ``model`` replaced by the reference gives the same loss, aux loss and
    gradients on a padded batch; some gradient's name contains ``some_gradient``."""
    ids = torch.randint(0, 64, (2, 29))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0

    def run():
        model.zero_grad(set_to_none=True)
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = run()
    mixers = [m for m in model.modules() if isinstance(m, MoSSE)]
    for m in mixers:
        m.forward = (lambda m: lambda u, layout, conv, ssm, rs, policy=None: (
            lambda r: (r[0], r[2], r[3]))(mosse_reference(m, u, layout, conv, ssm, rs, impl="chunked")))(m)
    out_r, grads_r = run()
    torch.testing.assert_close(out.loss, out_r.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.aux_loss, out_r.aux_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_r.keys() and any(some_gradient in n for n in grads)
    for name in grads_r:
        assert rel_err(grads[name], grads_r[name]) < 1e-4, name


# ---------------------------------------------------------------- Triton (GPU, or interpreter)


@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs CUDA, or TRITON_INTERPRET=1 for the Triton interpreter")
@pytest.mark.parametrize("with_padding", [False, True])
def test_triton_scan_matches_reference(tiny_config, with_padding):
    """The layer's varlen call (batch 1, one head, many segments, some empty, carried states)
    is valid for the Triton scan and agrees with the reference."""
    pytest.importorskip("triton")
    os.environ.setdefault("MOSSNET_TRITON_AUTOTUNE", "0")
    layer = make_layer(tiny_config, 4, 2, dtype=torch.float32).to(TRITON_DEVICE)
    batch, T = 2, 40
    u = torch.randn(batch, T, 12, device=TRITON_DEVICE)
    valid = padded(batch, T).long().to(TRITON_DEVICE) if with_padding else None
    states = tuple(s.to(TRITON_DEVICE) for s in random_states(layer, batch, torch.float32))
    assert_matches_reference(layer, u, SequenceLayout.build(batch, T, valid), states, return_states=True,
                             tol=1e-4, impl="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_makes_no_host_sync(tiny_config):
    """Forward + backward under bf16 autocast, padding included, with
    ``set_sync_debug_mode("error")`` (the model-level check is in test_cuda_graph_decode.py)."""
    model = MossNetForCausalLM(tiny_config(d_model=64, chunk_size=16, scan_impl="triton")).cuda().train()
    model.model.validate_token_ids = False
    ids = torch.randint(0, 64, (2, 50), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        return out.loss

    step()  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
