"""The MoSSE layer and the MoE MLP with the fused kernels (``fused_ops="triton"``: the router's
softmax top-k, the MoSSE read-out, the MLP's SwiGLU and combine) against the same layers with the PyTorch references: output
and every parameter's gradient, routed and every-pair rows, with padding. On CUDA, or on the CPU
under ``TRITON_INTERPRET=1``; skipped otherwise."""

from __future__ import annotations

import pytest
import torch
from kernel_device import DEVICE, needs_kernels
from mosse_helpers import randomize_mosse_

from mossnet import MossNetConfig
from mossnet.execution import ExecutionPolicy
from mossnet.layers.moe_mlp import MoEMLP
from mossnet.layers.mosse import MoSSE
from mossnet.layers.sequence_layout import SequenceLayout

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU CI)")


def make_layer(state_update: str, k: int, z_bias: bool) -> MoSSE:
    """A MoSSE of 4 experts (P 16, N 8, d_model 32) with every parameter away from its init."""
    cfg = MossNetConfig.from_preset("tiny", d_model=32, ssm_experts=4, ssm_top_k=k, state_update=state_update,
                                    ssm_head_dim=16, ssm_state_dim=8, ssm_z_bias=z_bias)
    torch.manual_seed(0)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.0)
    if z_bias:
        with torch.no_grad():
            layer.z_bias.normal_(std=0.5)  # zero at init: make its path count
    return layer.to(DEVICE)


def _outputs_and_grads(module, run):
    results = {}
    for impl in ("reference", "triton"):
        module.zero_grad()
        out = run(ExecutionPolicy(fused_ops=impl, scan_impl="chunked"))
        (out * torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)).sum().backward()
        results[impl] = out.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return results


@needs_kernels
@pytest.mark.parametrize("state_update, k, padded", [("routed", 2, True), ("all", 4, True), ("all", 4, False)])
def test_a_mosse_layer_with_the_fused_kernels_equals_the_reference_layer(state_update, k, padded):
    """Without padding, "all" takes the uniform-segment path (its parameter rows are a broadcast)."""
    layer = make_layer(state_update, k, z_bias=True)
    u = torch.randn(2, 19, 32, device=DEVICE)
    valid = None
    if padded:
        valid = torch.ones(2, 19, dtype=torch.long, device=DEVICE)
        valid[1, :5] = 0  # left padding
    layout = SequenceLayout.build(2, 19, valid)
    results = _outputs_and_grads(layer, lambda policy: layer(u, layout, policy=policy)[0])
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    assert results["triton"][1].keys() == results["reference"][1].keys()
    for name, want in results["reference"][1].items():
        torch.testing.assert_close(results["triton"][1][name], want, rtol=1e-4, atol=1e-5, msg=name)


@needs_kernels
@pytest.mark.parametrize("E, k, shared, padded", [(4, 1, False, True), (4, 2, False, True), (4, 2, True, False),
                                                  (1, 1, True, True)])
def test_an_moe_mlp_with_the_fused_kernels_equals_the_reference(E, k, shared, padded):
    """Output, router losses and every gradient (the losses' through the fused router's lse)."""
    torch.manual_seed(1)
    mlp = MoEMLP(32, 48, n_experts=E, top_k=k, renormalize=True, shared_expert=shared).to(DEVICE)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(std=0.3)
    u = torch.randn(29, 32, device=DEVICE)
    valid = torch.rand(29, device=DEVICE) > 0.2 if padded else None

    def run(policy):
        out, report = mlp(u, valid, policy=policy)
        if report is None:
            return out
        # The losses enter the gradient as a constant offset on every output element.
        return out + (report.aux + report.z) / out.numel()

    results = _outputs_and_grads(mlp, run)
    # fp32 sums in another order (the combine gathers where the reference scatter-adds).
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    for name, want in results["reference"][1].items():
        torch.testing.assert_close(results["triton"][1][name], want, rtol=1e-4, atol=1e-5, msg=name)


@needs_kernels
@pytest.mark.parametrize("state_update, k, z_bias", [("routed", 2, True), ("routed", 1, False), ("all", 4, True)])
def test_the_fused_decode_step_equals_the_pytorch_step(state_update, k, z_bias):
    """Three tokens in a row, each advancing the cache in place: the outputs and both states."""
    layer = make_layer(state_update, k, z_bias)
    E, P, N, K = 4, 16, 8, layer.conv_kernel
    g = torch.Generator().manual_seed(2)
    states = {impl: (torch.randn(3, E, K - 1, P + 2 * N, generator=g).to(DEVICE),
                     torch.randn(3, E, N, P, generator=g).to(DEVICE)) for impl in ("seed",)}
    conv0, ssm0 = states["seed"]
    caches = {impl: (conv0.clone(), ssm0.clone()) for impl in ("reference", "triton")}
    with torch.no_grad():
        for _ in range(3):
            u = torch.randn(3, 1, 32, generator=g).to(DEVICE)
            outs = {impl: layer(u, None, *caches[impl], decode=True,
                                policy=ExecutionPolicy(fused_ops=impl))[0] for impl in ("reference", "triton")}
            torch.testing.assert_close(outs["triton"], outs["reference"], rtol=1e-5, atol=1e-5)
            for got, want in zip(caches["triton"], caches["reference"]):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(caches["triton"][1], ssm0)  # the states did move


@needs_kernels
def test_a_one_tap_conv_decodes_with_the_pytorch_step():
    """K = 1 carries no window: the fused step (which shifts one) is not taken under "auto", and
    "triton" says why instead of writing before the window."""
    cfg = MossNetConfig.from_preset("tiny", d_model=32, ssm_experts=4, ssm_top_k=2, ssm_head_dim=16,
                                    ssm_state_dim=8, conv_kernel=1)
    torch.manual_seed(0)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    layer = layer.to(DEVICE)
    u = torch.randn(2, 1, 32, device=DEVICE)
    caches = {impl: (torch.zeros(2, 4, 0, 32, device=DEVICE), torch.randn(2, 4, 8, 16, generator=torch.Generator()
                                                                           .manual_seed(1)).to(DEVICE))
              for impl in ("reference", "auto")}
    with torch.no_grad():
        outs = {impl: layer(u, None, *caches[impl], decode=True, policy=ExecutionPolicy(fused_ops=impl))[0]
                for impl in ("reference", "auto")}
        with pytest.raises(ValueError, match="one tap"):
            layer(u, None, *caches["auto"], decode=True, policy=ExecutionPolicy(fused_ops="triton"))
    torch.testing.assert_close(outs["auto"], outs["reference"])
    torch.testing.assert_close(caches["auto"][1], caches["reference"][1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a race between warps)")
@pytest.mark.parametrize("P, N", [(8, 4), (16, 8)])
def test_the_fused_decode_step_stays_equal_over_many_steps_on_small_tiles(P, N):
    """The step updates the window and the state in place, and tiles smaller than the program's
    threads are held by several warps at once: a store racing ahead of another warp's load
    made a row's decode go astray now and then (one step in many). Two hundred steps, each
    against the PyTorch step from the same states."""
    cfg = MossNetConfig.from_preset("tiny", d_model=32, ssm_experts=4, ssm_top_k=2, ssm_head_dim=P,
                                    ssm_state_dim=N)
    torch.manual_seed(0)
    layer = MoSSE(cfg)
    layer.reset_parameters(cfg)
    randomize_mosse_(layer, a_log_max=1.0)
    layer = layer.cuda()
    K, batch = layer.conv_kernel, 5
    conv = torch.randn(batch, 4, K - 1, P + 2 * N, device="cuda")
    ssm = torch.randn(batch, 4, N, P, device="cuda")
    with torch.no_grad():
        for step in range(200):
            u = torch.randn(batch, 1, 32, device="cuda")
            want_conv, want_ssm = conv.clone(), ssm.clone()
            want = layer(u, None, want_conv, want_ssm, decode=True, policy=ExecutionPolicy(fused_ops="reference"))[0]
            got = layer(u, None, conv, ssm, decode=True, policy=ExecutionPolicy(fused_ops="triton"))[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step}: {m}")
            # The shift is a copy, exact on both paths; the new row comes from the expert projection,
            # which the two policies compute with different kernels (an ulp apart).
            torch.testing.assert_close(conv[:, :, :-1], want_conv[:, :, :-1], rtol=0, atol=0,
                                       msg=lambda m: f"window, step {step}: {m}")
            torch.testing.assert_close(conv[:, :, -1], want_conv[:, :, -1], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"window's new row, step {step}: {m}")
            torch.testing.assert_close(ssm, want_ssm, rtol=1e-5, atol=1e-6, msg=lambda m: f"state, step {step}: {m}")
            conv, ssm = want_conv, want_ssm  # both paths start the next step from the reference's states
