"""The decode step's per-token expert products: the fused Triton kernel against the PyTorch
``gathered_linear`` (odd widths, k = 1..3, several tokens, strided and broadcast inputs, sliced
weights, fp32 and bf16 weights), and the dispatcher's refusals.

    TRITON_INTERPRET=1 pytest tests/ops/test_gathered_linear.py   # CPU
    pytest tests/ops/test_gathered_linear.py                      # GPU
"""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE, needs_kernels
from mossnet.errors import ConfigError
from mossnet.ops.moe.gathered_linear import gathered_linear


def by_hand(x, weight, idx):
    """out[i, j] = weight[idx[i, j]] @ x[i, j], one product at a time, in fp64."""
    n, k = idx.shape
    out = torch.empty(n, k, weight.shape[1], dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            out[i, j] = weight[int(idx[i, j])].double().cpu() @ x[i, j].double().cpu()
    return out


@needs_kernels
@pytest.mark.parametrize("n,k,d_in,d_out", [(1, 2, 576, 1024), (3, 1, 37, 19), (2, 3, 130, 257)])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_the_products(n, k, d_in, d_out, weight_dtype):
    g = torch.Generator().manual_seed(n * 100 + k)
    weight = torch.randn(5, d_out, d_in, generator=g).to(DEVICE, weight_dtype)
    x = torch.randn(n, k, d_in, generator=g).to(DEVICE)
    idx = torch.randint(0, 5, (n, k), generator=g).to(DEVICE)
    with torch.no_grad():
        got = gathered_linear(x, weight, idx, impl="triton")
        ref = gathered_linear(x, weight, idx, impl="reference")
    assert got.shape == ref.shape == (n, k, d_out) and got.dtype == ref.dtype == torch.float32
    exact = by_hand(x, weight, idx)
    scale = exact.abs().max()
    assert (got.double().cpu() - exact).abs().max() / scale < 1e-5
    assert (ref.double().cpu() - exact).abs().max() / scale < 1e-5


@needs_kernels
def test_strided_inputs_and_sliced_weights():
    """What the layers hand over: one token broadcast to its k experts (stride 0) and a column
    slice of the stacked projection."""
    g = torch.Generator().manual_seed(3)
    full = torch.randn(4, 40, 24, generator=g).to(DEVICE)
    weight = full[:, 8:-1]  # (4, 31, 24), not contiguous
    u = torch.randn(2, 24, generator=g).to(DEVICE)
    x = u[:, None, :].expand(-1, 2, -1)
    idx = torch.tensor([[3, 0], [1, 3]], device=DEVICE)
    with torch.no_grad():
        got = gathered_linear(x, weight, idx, impl="triton")
    exact = by_hand(x, weight, idx)
    assert (got.double().cpu() - exact).abs().max() / exact.abs().max() < 1e-5


@needs_kernels
def test_gradients_take_the_reference():
    """The kernel is inference-only: with gradients "auto" runs the PyTorch product (which
    backpropagates) and "triton" refuses."""
    weight = torch.randn(3, 5, 4, device=DEVICE, requires_grad=True)
    x = torch.randn(1, 2, 4, device=DEVICE)
    idx = torch.tensor([[0, 2]], device=DEVICE)
    gathered_linear(x, weight, idx, impl="auto").sum().backward()
    assert weight.grad is not None
    with pytest.raises(ConfigError, match="inference-only"):
        gathered_linear(x, weight, idx, impl="triton")


def test_reference_is_the_default_and_runs_everywhere():
    weight = torch.randn(3, 5, 4)
    x = torch.randn(2, 2, 4)
    idx = torch.tensor([[0, 2], [1, 1]])
    got = gathered_linear(x, weight, idx)
    assert (got.double() - by_hand(x, weight, idx)).abs().max() < 1e-5
