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
