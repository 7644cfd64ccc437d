"""The dtype the MoSSE forward hands x, B, C to the scan in (``mosse_rules.scan_input_dtype``):
bf16 under bf16 autocast (the GPU kernels' tensor-core path), fp32 otherwise and for fp16, and
the layer under autocast stays within the spec's bf16 bound of the fp32 layer."""

from __future__ import annotations

import pytest
import torch

import mossnet.layers.mosse as mosse_module
from mossnet import MossNetConfig
from mossnet.layers.mosse import MoSSE
from mossnet.layers.mosse_rules import scan_input_dtype

from mosse_helpers import randomize_mosse_


def test_the_rule():
    x32 = torch.zeros(2)
    assert scan_input_dtype(x32) == torch.float32
    assert scan_input_dtype(x32.half()) == torch.float32  # the folded values do not fit fp16
    assert scan_input_dtype(x32.bfloat16()) == torch.bfloat16
    assert scan_input_dtype(x32.double()) == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert scan_input_dtype(x32) == torch.bfloat16
        assert scan_input_dtype(x32.double()) == torch.float64
    with torch.autocast("cpu", dtype=torch.float16):
        assert scan_input_dtype(x32) == torch.float32


def _layer(state_update: str) -> MoSSE:
    cfg = MossNetConfig.from_preset("tiny", state_update=state_update)
    torch.manual_seed(0)
    layer = MoSSE(cfg, 0)
    layer.reset_parameters(cfg)
    return randomize_mosse_(layer)


@pytest.mark.parametrize("state_update", ["routed", "all"])
def test_autocast_scans_bf16_inputs_within_the_bf16_bound(monkeypatch, state_update):
    layer = _layer(state_update)
    seen = []
    real_scan = mosse_module.mosse_scan

    def spy(x, dt, A, B, C, *args, **kwargs):
        seen.append((x.dtype, dt.dtype, B.dtype, C.dtype))
        return real_scan(x, dt, A, B, C, *args, **kwargs)

    monkeypatch.setattr(mosse_module, "mosse_scan", spy)
    u = torch.randn(2, 37, layer.in_proj.shape[-1])
    reference, _, _ = layer(u)
    assert seen == [(torch.float32,) * 4]

    seen.clear()
    leaf = u.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _, _ = layer(leaf)
    assert seen == [(torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16)]
    rel = (out.float() - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
    # bf16 projections and read-out matmuls as well as bf16 scan inputs: a few bf16 ulps.
    assert rel < 2e-2, rel
    out.float().sum().backward()  # the gradient flows back through the casts
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
