"""RMSNorm: the production path (``F.rms_norm``, one fused kernel each way on CUDA) against the
written-out formula, forward and backward, across dtypes, odd widths and autocast."""

from __future__ import annotations

import pytest
import torch

from mossnet.layers.norm import RMSNorm, rms_norm, rms_norm_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (input dtype, weight dtype) -> (forward, gradient) tolerance; bf16 output rounds to 2^-8.
CASES = {
    (torch.float32, torch.float32): (1e-6, 1e-5),
    (torch.bfloat16, torch.float32): (1e-2, 2e-2),
    (torch.bfloat16, torch.bfloat16): (1e-2, 2e-2),
    (torch.float64, torch.float32): (1e-12, 1e-11),
}


def _both(fn, x, w, eps, autocast_device=None):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    if autocast_device:
        with torch.autocast(autocast_device, dtype=torch.bfloat16):
            y = fn(x, w, eps)
    else:
        y = fn(x, w, eps)
    # A fixed, sign-changing upstream gradient (an all-ones one would hide errors in dx).
    g = torch.linspace(-1, 1, y.numel(), device=y.device, dtype=torch.float32).reshape(y.shape).to(y.dtype)
    dx, dw = torch.autograd.grad(y, (x, w), g)
    return y, dx, dw


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", list(CASES), ids=lambda d: f"{d[0]}-{d[1]}".replace("torch.", ""))
# A width of 1 is left out: x / sqrt(x^2 + eps) is flat there, so dx is eps-sized noise.
@pytest.mark.parametrize("shape", [(3, 7, 33), (5, 576), (1, 1, 5)])
def test_matches_reference_forward_and_backward(device, dtypes, shape):
    x_dtype, w_dtype = dtypes
    fwd_tol, grad_tol = CASES[dtypes]
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=gen)).to(device, x_dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(device, w_dtype)
    y, dx, dw = _both(rms_norm, x, w, 1e-5)
    y_ref, dx_ref, dw_ref = _both(rms_norm_reference, x, w, 1e-5)
    assert y.dtype == y_ref.dtype == x_dtype
    assert dx.dtype == x_dtype and dw.dtype == w_dtype
    assert _rel(y, y_ref) <= fwd_tol
    assert _rel(dx, dx_ref) <= grad_tol
    assert _rel(dw, dw_ref) <= grad_tol


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_keeps_the_norm_in_fp32(device):
    # Under bf16 autocast the residual stream stays fp32: the norm must not round it to bf16.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 9, 64, generator=gen).to(device)
    w = (1 + 0.1 * torch.randn(64, generator=gen)).to(device)
    y, dx, dw = _both(rms_norm, x, w, 1e-6, autocast_device=device)
    y_ref, dx_ref, dw_ref = _both(rms_norm_reference, x, w, 1e-6)
    assert y.dtype == torch.float32
    assert _rel(y, y_ref) <= 1e-6 and _rel(dx, dx_ref) <= 1e-5 and _rel(dw, dw_ref) <= 1e-5


def test_module_uses_its_weight_and_eps():
    norm = RMSNorm(5, eps=0.5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 6.0))
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0, 1.0]])
    expected = x / torch.sqrt((x**2).mean() + 0.5) * torch.arange(1.0, 6.0)
    torch.testing.assert_close(norm(x), expected)
