"""The fused MoSSE read-out (Triton) against its PyTorch reference: forward and every gradient,
odd widths and row counts, with and without the z bias, strided parameter rows, fp32 and bf16
(the layer with each: tests/layers/test_fused_layers.py).

The kernels run on CUDA, or on the CPU under Triton's interpreter:

    TRITON_INTERPRET=1 pytest tests/ops/test_read_out.py   # CPU
    pytest tests/ops/test_read_out.py                      # GPU

The dispatcher's refusals and fallbacks are tested everywhere.
"""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE, INTERPRET, needs_kernels
from mossnet.errors import ConfigError
from mossnet.execution import ExecutionPolicy
from mossnet.ops.mosse.read_out import read_out, read_out_reference, why_not_fused

NAMES = ("y_folded", "scale", "x", "skip_D", "z", "z_bias", "norm_weight")


def make_inputs(M: int, P: int, dtype: torch.dtype, z_bias: bool, seed: int = 0, device: str = "cpu"):
    """The layer's shapes: activations in ``dtype``, per-row parameters in fp32 as strided column
    blocks of one gathered table (how ``MoSSE._expert_rows`` hands them over)."""
    g = torch.Generator().manual_seed(seed)
    E = 3
    table = torch.randn(E, 3 * P, generator=g) * 0.5
    table[:, P:2 * P] += 1.0  # norm weights near 1
    expert = torch.randint(0, E, (M,), generator=g)
    rows = table[expert]
    inputs = dict(
        y_folded=torch.randn(M, P, generator=g).to(dtype),
        scale=torch.rand(M, generator=g) * 2 + 0.05,
        x=torch.randn(M, P, generator=g).to(dtype),
        skip_D=rows[:, :P], z=torch.randn(M, P, generator=g).to(dtype),
        z_bias=rows[:, 2 * P:] if z_bias else None, norm_weight=rows[:, P:2 * P],
    )
    return {k: (v.to(device).requires_grad_() if v is not None else None) for k, v in inputs.items()}


def grads_of(fn, inputs, upstream):
    for v in inputs.values():
        if v is not None:
            v.grad = None
    out = fn(**inputs, eps=1e-5)
    out.backward(upstream)
    return out.detach(), {k: v.grad for k, v in inputs.items() if v is not None}


@needs_kernels
@pytest.mark.parametrize("M, P", [(1, 64), (37, 48), (130, 64), (5, 100)])
@pytest.mark.parametrize("z_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_read_out_equals_the_reference(M, P, z_bias, dtype):
    inputs = make_inputs(M, P, dtype, z_bias, seed=M + P, device=DEVICE)
    upstream = torch.randn(M, P, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref_out, ref_grads = grads_of(lambda **a: read_out(**a, impl="reference"), inputs, upstream)
    out, got = grads_of(lambda **a: read_out(**a, impl="triton"), inputs, upstream)
    assert out.dtype == torch.float32 and out.shape == (M, P)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for name in NAMES:
        if name in ref_grads:
            assert got[name].dtype == ref_grads[name].dtype, name
            scale = ref_grads[name].float().abs().max().clamp_min(1e-6)
            err = (got[name].float() - ref_grads[name].float()).abs().max() / scale
            limit = 1e-4 if dtype == torch.float32 else 1e-2  # bf16 grads of bf16 inputs are rounded once
            assert err < limit, (name, float(err))


def test_reference_policy_never_needs_triton():
    inputs = make_inputs(7, 16, torch.float32, True)
    want = read_out_reference(**inputs, eps=1e-5)
    torch.testing.assert_close(read_out(**inputs, eps=1e-5, impl="reference"), want)
    if DEVICE != "cpu":  # on a plain CPU, "auto" falls back to the same reference
        torch.testing.assert_close(read_out(**inputs, eps=1e-5, impl="auto"), want)


@pytest.mark.skipif(INTERPRET, reason="the interpreter runs the kernels on the CPU")
def test_triton_where_it_cannot_run_is_one_clear_error():
    inputs = make_inputs(3, 8, torch.float32, False)
    with pytest.raises(ConfigError, match="fused MoSSE read-out cannot run here: "):
        read_out(**inputs, eps=1e-5, impl="triton")


def test_float64_layers_take_the_reference():
    x = torch.zeros(2, 4)
    assert why_not_fused(x, torch.zeros(2, dtype=torch.float64)) is not None


def test_the_policy_checks_fused_ops():
    assert ExecutionPolicy().fused_ops == "auto"
    with pytest.raises(ConfigError, match="fused_ops must be one of"):
        ExecutionPolicy(fused_ops="fast")


def test_a_trace_takes_the_reference_quietly(monkeypatch, caplog):
    """Under torch.compile / torch.export the reference is traced: "auto" says nothing, even on
    CUDA; the tracing check comes before any cached import check."""
    from mossnet.ops import fused

    monkeypatch.setattr(fused, "tracing", lambda: True)
    inputs = make_inputs(4, 8, torch.float32, True)
    assert why_not_fused(inputs["x"], inputs["scale"]) == fused.TRACING
    with caplog.at_level("INFO", logger="mossnet.ops.fused"):
        assert fused.choose("op", "auto", lambda: fused.TRACING, on_cuda=True) is False
    assert not caplog.records
    torch.testing.assert_close(read_out(**inputs, eps=1e-5), read_out_reference(**inputs, eps=1e-5))


def test_the_reference_policy_never_asks_where_the_kernels_could_run():
    from mossnet.ops import fused

    def asked():
        raise AssertionError("the reason was asked under fused_ops='reference'")

    assert fused.choose("op", "reference", asked, on_cuda=True) is False
