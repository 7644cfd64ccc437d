"""The compact layout of the routed MoSSE forward (``MoSSE._forward_compact``) against the dense
masked layout it replaces in training (``compact_routing = False``), which stays the reference:
outputs, router reports, every parameter gradient and the input gradient; odd lengths (several
scan chunks, segment boundaries mid-chunk), k = E, a single expert, padding, experts that get
no token in a row or in the whole batch; and the whole model's loss and gradients."""

from __future__ import annotations

import os

import pytest
import torch

from mossnet import MossNetForCausalLM
from mossnet.layers.mosse import MoSSE
from mossnet.layers.sequence_layout import SequenceLayout
from mosse_helpers import randomize_mosse_


def make_layer(tiny_config, E, k, dtype=torch.float64, **kw):
    kw.setdefault("chunk_size", 16)
    cfg = tiny_config(d_model=12, ssm_experts=E, ssm_top_k=k, ssm_head_dim=6, ssm_state_dim=5, **kw)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.5)
    return layer.to(dtype)


class PathSpy:
    """Counts which layout each forward took (a silent fallback to dense would make every
    comparison here trivially true)."""

    def __init__(self, layer):
        self.calls = {"compact": 0, "dense": 0}
        for name, key in (("_forward_compact", "compact"), ("_forward_dense", "dense")):
            inner = getattr(layer, name)

            def wrapped(*args, _inner=inner, _key=key, **kwargs):
                self.calls[_key] += 1
                return _inner(*args, **kwargs)

            setattr(layer, name, wrapped)


def forward_and_grads(layer, u, valid=None, compact=True):
    """o, report, and the gradients of a random scalar of (o, aux, z) w.r.t. u and every parameter."""
    layer.compact_routing = compact
    layer.zero_grad(set_to_none=True)
    u = u.detach().clone().requires_grad_(True)
    layout = SequenceLayout.build(u.shape[0], u.shape[1], None if valid is None else valid.long())
    o, report, states = layer(u, layout)
    assert states is None
    g = torch.randn(o.shape, dtype=o.dtype, generator=torch.Generator().manual_seed(7)).to(o.device)
    loss = (o * g).sum()
    if report is not None:
        loss = loss + 0.3 * report.aux + 0.1 * report.z
    loss.backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    grads["input"] = u.grad
    return o.detach(), report, grads


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_compact_equals_dense(layer, u, valid=None, tol=1e-10):
    spy = PathSpy(layer)
    o_c, rep_c, g_c = forward_and_grads(layer, u, valid, compact=True)
    o_d, rep_d, g_d = forward_and_grads(layer, u, valid, compact=False)
    assert spy.calls == {"compact": 1, "dense": 1}
    assert o_c.abs().max() > 0
    assert rel_err(o_c, o_d) < tol
    if rep_d is None:
        assert rep_c is None
    else:  # the router and its statistics do not depend on the layout at all
        assert torch.equal(rep_c.load, rep_d.load) and torch.equal(rep_c.logits, rep_d.logits)
        assert torch.equal(rep_c.aux, rep_d.aux) and torch.equal(rep_c.z, rep_d.z)
    assert g_c.keys() == g_d.keys()
    for name in g_d:
        if g_d[name] is None:
            assert g_c[name] is None, name
            continue
        assert g_c[name] is not None, name
        assert torch.isfinite(g_c[name]).all(), name
        if g_d[name].abs().max() == 0:
            # e.g. A_log at T = 1 (the decay never acts), where the compact layout's |A_e| in
            # dt' and in 1/|A_e| cancel only up to rounding: zero up to the tolerance.
            assert g_c[name].abs().max() < tol, name
        else:
            assert rel_err(g_c[name], g_d[name]) < tol, (name, rel_err(g_c[name], g_d[name]))
    return o_c, g_c


@pytest.mark.parametrize("E,k", [(4, 2), (4, 1), (3, 3), (1, 1)])
@pytest.mark.parametrize("T", [1, 7, 33, 70])
def test_compact_equals_dense_fp64(tiny_config, E, k, T):
    layer = make_layer(tiny_config, E, k)
    u = torch.randn(2, T, 12, dtype=torch.float64)
    assert_compact_equals_dense(layer, u)


@pytest.mark.parametrize("E,k", [(4, 2), (3, 3), (1, 1)])
def test_compact_equals_dense_fp32(tiny_config, E, k):
    layer = make_layer(tiny_config, E, k, dtype=torch.float32)
    u = torch.randn(3, 37, 12)
    assert_compact_equals_dense(layer, u, tol=1e-4)


@pytest.mark.parametrize("E,k", [(4, 2), (3, 3), (1, 1)])
@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_compact_equals_dense_with_padding(tiny_config, E, k, impl):
    """Padding tokens are routed nowhere: their rows form a trailing segment that no expert's
    conv or scan sees, and their output is 0 in both layouts."""
    layer = make_layer(tiny_config, E, k, scan_impl=impl)
    batch, T = 3, 21
    u = torch.randn(batch, T, 12, dtype=torch.float64)
    valid = torch.ones(batch, T, dtype=torch.bool)
    valid[0, :5] = False  # left padding
    valid[1, 13:] = False  # right padding
    valid[2, 7:9] = False  # a hole
    o, grads = assert_compact_equals_dense(layer, u, valid)
    assert (o[~valid] == 0).all() and (grads["input"][~valid] == 0).all()
    # The padded tokens' values do not matter.
    u2 = torch.where(valid[..., None], u, torch.randn_like(u) * 10)
    o2, _, _ = forward_and_grads(layer, u2, valid)
    torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-12)


def test_compact_with_a_fully_padded_row(tiny_config):
    layer = make_layer(tiny_config, 4, 2)
    u = torch.randn(2, 9, 12, dtype=torch.float64)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1] = False
    assert_compact_equals_dense(layer, u, valid)


def test_compact_with_empty_segments(tiny_config):
    """Bias the router so that expert 3 gets no token at all and expert 2 none in row 0: their
    segments are empty, and they sit between non-empty ones in the segment table."""
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
    _, grads = assert_compact_equals_dense(layer, u)
    assert grads["in_proj"][3].abs().max() == 0 and grads["in_proj"][2].abs().max() > 0


def test_dense_layout_where_compact_does_not_apply(tiny_config):
    """Carried or returned states, packed documents and state_update="all" keep the dense path."""
    layer = make_layer(tiny_config, 4, 2)
    spy = PathSpy(layer)
    u = torch.randn(2, 8, 12, dtype=torch.float64)
    plain = SequenceLayout.build(2, 8)
    layer(u, plain, return_states=True)
    E, P, N, K = 4, 6, 5, layer.conv_kernel
    conv = torch.zeros(2, E, K - 1, P + 2 * N, dtype=torch.float64)
    ssm = torch.zeros(2, E, N, P, dtype=torch.float64)
    layer(u, plain, conv, ssm)
    packed = SequenceLayout.build(2, 8, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]] * 2))
    layer(u, packed)
    assert spy.calls == {"compact": 0, "dense": 3}
    layer(u, plain)
    assert spy.calls == {"compact": 1, "dense": 3}

    all_layer = make_layer(tiny_config, 4, 2, state_update="all")
    spy = PathSpy(all_layer)
    all_layer(u, plain)
    assert spy.calls == {"compact": 0, "dense": 1}


def test_fresh_forward_equals_forward_with_zero_states(tiny_config):
    """The compact output equals the dense one from explicit zero states (the generation path)."""
    layer = make_layer(tiny_config, 4, 2)
    u = torch.randn(2, 19, 12, dtype=torch.float64)
    o, _, _ = layer(u, SequenceLayout.build(2, 19))
    E, P, N, K = 4, 6, 5, layer.conv_kernel
    conv = torch.zeros(2, E, K - 1, P + 2 * N, dtype=torch.float64)
    ssm = torch.zeros(2, E, N, P, dtype=torch.float64)
    o_states, _, _ = layer(u, SequenceLayout.build(2, 19), conv, ssm, return_states=True)
    assert rel_err(o, o_states) < 1e-10


@pytest.mark.parametrize("with_padding", [False, True])
def test_model_loss_and_grads_with_compact_on_and_off(make_model, with_padding):
    model = make_model(chunk_size=16).train()
    assert any(isinstance(m, MoSSE) for m in model.modules())
    ids = torch.randint(0, 64, (2, 29))
    mask = None
    if with_padding:
        mask = torch.ones_like(ids)
        mask[0, :6] = 0

    def run(compact):
        for m in model.modules():
            if isinstance(m, MoSSE):
                m.compact_routing = compact
        model.zero_grad(set_to_none=True)
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_c, g_c = run(True)
    out_d, g_d = run(False)
    torch.testing.assert_close(out_c.loss, out_d.loss, rtol=1e-6, atol=1e-6)
    # Bit-equal per layer (see assert_compact_equals_dense); here the second layer's routers see
    # inputs that differ by the first layer's rounding.
    torch.testing.assert_close(out_c.aux_loss, out_d.aux_loss, rtol=1e-6, atol=1e-6)
    assert g_c.keys() == g_d.keys() and any("mixer.in_proj" in n for n in g_c)
    for name in g_d:
        assert rel_err(g_c[name], g_d[name]) < 1e-4, name


# ---------------------------------------------------------------- Triton (GPU, or interpreter)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else ("cpu" if INTERPRET else None)


@pytest.mark.skipif(TRITON_DEVICE is None, reason="needs CUDA, or TRITON_INTERPRET=1 for the Triton interpreter")
@pytest.mark.parametrize("with_padding", [False, True])
def test_compact_with_triton_scan_equals_dense(tiny_config, with_padding):
    """The compact path's varlen call (batch 1, one head, E*batch + 1 segments, some empty) is
    valid for the Triton scan and agrees with the dense layout on the same scan."""
    pytest.importorskip("triton")
    os.environ.setdefault("MOSSNET_TRITON_AUTOTUNE", "0")
    layer = make_layer(tiny_config, 4, 2, dtype=torch.float32, scan_impl="triton").to(TRITON_DEVICE)
    batch, T = 2, 40
    u = torch.randn(batch, T, 12, device=TRITON_DEVICE)
    valid = None
    if with_padding:
        valid = torch.ones(batch, T, dtype=torch.bool, device=TRITON_DEVICE)
        valid[0, :5] = False
    assert_compact_equals_dense(layer, u, valid, tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compact_training_step_makes_no_host_sync(tiny_config):
    """Forward + backward of the compact path under bf16 autocast, padding included, with
    ``set_sync_debug_mode("error")`` (the model-level check is in test_cuda_graph_decode.py)."""
    model = MossNetForCausalLM(tiny_config(d_model=64, chunk_size=16, scan_impl="triton")).cuda().train()
    model.model.validate_token_ids = False
    spies = [PathSpy(m) for m in model.modules() if isinstance(m, MoSSE)]
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
    assert all(s.calls["compact"] == 2 and s.calls["dense"] == 0 for s in spies)
