"""The fused router softmax top-k (Triton) against its PyTorch reference: probabilities, chosen
experts (ties to the lower index), gates, the log-sum-exp, and the gradient through all three.
On CUDA, or on the CPU under ``TRITON_INTERPRET=1``; the dispatcher's rules run everywhere."""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE, needs_kernels
from mossnet.errors import ConfigError
from mossnet.ops.moe.routing import softmax_top_k, softmax_top_k_reference, why_not_fused



def run(impl: str, logits: torch.Tensor, k: int, renormalize: bool, seed: int = 0, used=("probs", "gates", "lse")):
    """Outputs and d logits of a random linear function of the outputs named in ``used`` (the
    others get no gradient, as when a caller ignores them)."""
    leaf = logits.detach().clone().requires_grad_()
    probs, idx, gates, lse = softmax_top_k(leaf, k, renormalize, impl=impl)
    g = torch.Generator().manual_seed(seed)
    outputs = {"probs": probs, "gates": gates, "lse": lse}
    loss = sum((outputs[name] * torch.randn(outputs[name].shape, generator=g).to(leaf.device)).sum() for name in used)
    loss.backward()
    return probs.detach(), idx, gates.detach(), leaf.grad, lse.detach()


@needs_kernels
@pytest.mark.parametrize("n, E, k", [(1, 4, 2), (37, 4, 2), (200, 9, 9), (33, 8, 1), (64, 5, 3), (130, 16, 4)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_fused_equals_the_reference(n, E, k, renormalize):
    logits = torch.randn(n, E, generator=torch.Generator().manual_seed(n * E + k)).to(DEVICE) * 2
    want = run("reference", logits, k, renormalize)
    got = run("triton", logits, k, renormalize)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)  # probs
    assert torch.equal(got[1], want[1]) and got[1].dtype == torch.int64  # experts, best first
    torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-7)  # gates
    torch.testing.assert_close(got[3], want[3], rtol=1e-5, atol=1e-6)  # d logits (fp32 sums in another order)
    torch.testing.assert_close(got[4], want[4], rtol=1e-6, atol=1e-6)  # lse


@needs_kernels
@pytest.mark.parametrize("used", [("lse",), ("gates",), ("probs", "lse"), ("gates", "lse")])
def test_gradient_through_any_subset_of_outputs(used):
    # The router's LM path uses only the gates; the losses use probs and lse.
    logits = torch.randn(45, 8, generator=torch.Generator().manual_seed(3)).to(DEVICE) * 3
    want = run("reference", logits, 2, True, used=used)
    got = run("triton", logits, 2, True, used=used)
    torch.testing.assert_close(got[3], want[3], rtol=1e-5, atol=1e-6)


@needs_kernels
def test_ties_go_to_the_lower_expert():
    logits = torch.tensor([[0.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0], [1.0, 0.0, 1.0, 1.0]], device=DEVICE)
    _, idx, _, _ = softmax_top_k(logits, 2, True, impl="triton")
    assert idx.tolist() == [[1, 2], [0, 1], [0, 2]]
    assert torch.equal(idx, softmax_top_k_reference(logits, 2, True)[1])


@needs_kernels
def test_no_tokens():
    probs, idx, gates, lse = softmax_top_k(torch.zeros(0, 4, device=DEVICE), 2, True, impl="triton")
    assert probs.shape == (0, 4) and idx.shape == (0, 2) and gates.shape == (0, 2) and lse.shape == (0,)


def test_reference_policy_and_refusals():
    logits = torch.randn(6, 4)
    want = softmax_top_k_reference(logits, 2, True)
    for got, ref in zip(softmax_top_k(logits, 2, True, impl="reference"), want):
        assert torch.equal(got, ref)
    assert why_not_fused(logits.double()) is not None  # fp64 routers take the reference
    if DEVICE is None:
        with pytest.raises(ConfigError, match="fused router softmax top-k cannot run here"):
            softmax_top_k(logits, 2, True, impl="triton")


# ------------------------------------------------------------------------------- router losses
def _loss_inputs(n: int, E: int, k: int, padding: bool, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, E, generator=g) * 2
    probs, lse = logits.softmax(-1), torch.logsumexp(logits, -1)
    counts = torch.bincount(probs.topk(k, -1).indices.flatten(), minlength=E)
    valid = (torch.rand(n, generator=g) > 0.3) if padding else None
    if valid is not None:
        counts = torch.bincount(probs.topk(k, -1).indices[valid].flatten(), minlength=E)
    return probs.to(device), lse.to(device), counts.to(device), None if valid is None else valid.to(device)


@needs_kernels
@pytest.mark.parametrize("n,E,k", [(1, 2, 1), (37, 4, 2), (3000, 9, 9), (513, 33, 3)])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("used", ["both", "aux", "z"])
def test_router_losses_fused_equal_the_reference(n, E, k, padding, used):
    """Both losses and the gradients into probs and lse, with padding tokens, more tokens than
    one block, and one loss unused (its gradient absent)."""
    from mossnet.ops.moe.routing import router_losses, router_losses_reference

    probs, lse, counts, valid = _loss_inputs(n, E, k, padding, seed=n + E, device=DEVICE)

    def run(fn):
        p, l = probs.clone().requires_grad_(), lse.clone().requires_grad_()
        aux, z = fn(p, l)
        total = {"both": 0.7 * aux + 1.3 * z, "aux": 0.7 * aux, "z": 1.3 * z}[used]
        total.backward()
        return aux.detach(), z.detach(), p.grad, l.grad

    got = run(lambda p, l: router_losses(p, l, counts, valid, k, impl="triton"))
    want = run(lambda p, l: router_losses_reference(p.double(), l.double(), counts, valid, k))
    for name, a, b in zip(("aux", "z", "dprobs", "dlse"), got, want):
        if b is None:
            assert a is None or not a.abs().any(), name
            continue
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-6, atol=1e-9, msg=name)


def test_router_losses_reference_by_hand():
    """At perfect balance L_aux is 1; L_z is the mean squared log-sum-exp over valid tokens."""
    from mossnet.ops.moe.routing import router_losses_reference

    probs = torch.full((4, 2), 0.5)
    lse = torch.tensor([1.0, 2.0, 3.0, 100.0])
    aux, z = router_losses_reference(probs, lse, torch.tensor([2, 2]), torch.tensor([True, True, True, False]), 1)
    assert float(aux) == pytest.approx(4 / 3)  # 3 valid tokens but 4 dispatches counted
    assert float(z) == pytest.approx((1 + 4 + 9) / 3)
    aux, _ = router_losses_reference(probs[:2], lse[:2], torch.tensor([1, 1]), None, 1)
    assert float(aux) == pytest.approx(1.0)
