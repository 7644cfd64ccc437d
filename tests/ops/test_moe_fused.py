"""The fused MoE-MLP kernels against their PyTorch references, forward and every gradient: the
SwiGLU activation, the gather of tokens into expert rows and the gated combine of expert rows
onto tokens. On CUDA, or on the CPU
under ``TRITON_INTERPRET=1``; the references and the dispatch rules run everywhere."""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE, needs_kernels
from mossnet.errors import ConfigError
from mossnet.ops.moe import dispatch_by_expert
from mossnet.ops.moe.combine import combine, combine_reference, gather_token_rows, gather_token_rows_reference
from mossnet.ops.moe.swiglu import swiglu, swiglu_reference

# Relative RMS error allowed against an fp64 evaluation of the reference: the kernels compute in
# fp32; in bf16 both sides round their outputs (and the reference its intermediates) to 2^-8.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _grads(fn, inputs, seed=0):
    """fn's output and the gradients of a random linear function of it, for every input."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    grads = torch.autograd.grad((out * weight).float().sum(), leaves)
    return (out, *grads)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 2), (37, 66), (5, 3, 258), (130, 1024)])
def test_swiglu_fused_equals_reference(dtype, shape):
    hidden = (2 * torch.randn(shape, generator=torch.Generator().manual_seed(shape[-1]))).to(DEVICE, dtype)
    got = _grads(lambda h: swiglu(h, impl="triton"), [hidden])
    exact = _grads(swiglu_reference, [hidden.double()])
    assert got[0].dtype == dtype and got[0].shape == (*shape[:-1], shape[-1] // 2)
    for g, e in zip(got, exact):
        assert _rel(g, e) <= TOL[dtype]


def _routed(n: int, k: int, E: int, D: int, padding: bool, dtype, seed: int):
    """Rows (n*k, D) in dispatch order, gates (n, k) and the dispatch, as a routed layer makes
    them: padding tokens have zero gates and (dropped) zero rows."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(n)])
    valid = torch.rand(n, generator=gen) > 0.3 if padding else None
    d = dispatch_by_expert(idx.to(DEVICE), None if valid is None else valid.to(DEVICE), E)
    gates = torch.rand(n, k, generator=gen)
    rows = torch.randn(n * k, D, generator=gen)
    if valid is not None:
        gates = gates * valid[:, None]
        rows[int(valid.sum()) * k:] = 0  # rows past offsets[-1]: dropped, zero
    return rows.to(DEVICE, dtype), gates.to(DEVICE), d


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,k,E,D", [(1, 1, 1, 1), (19, 2, 4, 33), (40, 3, 5, 130), (64, 2, 8, 576), (9, 4, 4, 7)])
@pytest.mark.parametrize("padding", [False, True])
def test_combine_fused_equals_reference(dtype, n, k, E, D, padding):
    rows, gates, d = _routed(n, k, E, D, padding, dtype, seed=n * D + k)
    got = _grads(lambda r, g: combine(r, g, d, impl="triton"), [rows, gates])
    exact = _grads(lambda r, g: combine_reference(r, g, d), [rows.double(), gates.double()])
    assert got[0].dtype == dtype and got[0].shape == (n, D)
    assert got[2].dtype == gates.dtype
    for g, e in zip(got, exact):
        assert _rel(g, e) <= TOL[dtype]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,k,E,D", [(1, 1, 1, 1), (19, 2, 4, 33), (40, 3, 5, 130), (64, 2, 8, 576)])
@pytest.mark.parametrize("padding", [False, True])
def test_gather_fused_equals_reference(dtype, n, k, E, D, padding):
    _, _, d = _routed(n, k, E, D, padding, dtype, seed=n + D * k)
    u = torch.randn(n, D, generator=torch.Generator().manual_seed(D)).to(DEVICE, dtype)
    got = _grads(lambda x: gather_token_rows(x, d, impl="triton"), [u])
    want = _grads(lambda x: gather_token_rows_reference(x, d), [u])
    assert got[0].dtype == want[0].dtype and got[1].dtype == dtype
    assert torch.equal(got[0], want[0])  # a copy: exact
    exact = _grads(lambda x: gather_token_rows_reference(x, d), [u.double()])
    assert _rel(got[1], exact[1]) <= TOL[dtype]


@needs_kernels
def test_combine_is_the_gated_sum_by_hand():
    # Two tokens, k = 2, three experts: out[t] = sum_j g[t, j] * (row of (t, j)).
    idx = torch.tensor([[2, 0], [0, 1]], device=DEVICE)
    d = dispatch_by_expert(idx, None, 3)
    gates = torch.tensor([[0.75, 0.25], [0.5, 0.5]], device=DEVICE)
    assignment_rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], device=DEVICE)  # (t, j) flat
    rows = assignment_rows[d.slot]  # into expert order
    out = combine(rows, gates, d, impl="triton")
    want = torch.tensor([[0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 4], [0.5 * 5 + 0.5 * 7, 0.5 * 6 + 0.5 * 8]])
    torch.testing.assert_close(out.cpu(), want)


def test_references_take_the_reference_policy_and_refuse_triton_where_it_cannot_run():
    hidden = torch.randn(4, 6)
    assert torch.equal(swiglu(hidden, impl="reference"), swiglu_reference(hidden))
    rows, gates, d = torch.randn(8, 5), torch.rand(4, 2), dispatch_by_expert(torch.tensor([[0, 1]] * 4), None, 2)
    assert torch.equal(combine(rows, gates, d, impl="reference"), combine_reference(rows, gates, d))
    u = torch.randn(4, 5)
    assert torch.equal(gather_token_rows(u, d, impl="reference"), u[d.token])
    if DEVICE is None:
        with pytest.raises(ConfigError, match="fused SwiGLU activation cannot run here"):
            swiglu(hidden, impl="triton")
        with pytest.raises(ConfigError, match="fused expert combine cannot run here"):
            combine(rows, gates, d, impl="triton")
        with pytest.raises(ConfigError, match="fused token gather cannot run here"):
            gather_token_rows(u, d, impl="triton")
