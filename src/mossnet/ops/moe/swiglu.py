"""The SwiGLU activation of the MLP experts, silu(gate) * up, over the two halves of one
projection: the PyTorch reference and the choice of the fused Triton kernel
(``swiglu_triton.py``) by the policy's ``fused_ops``.

The projection's output holds [gate | up] in its last dimension (``gate_up`` weights, W_1 || W_3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mossnet.ops.fused import choose, why_triton_cannot_run


def swiglu_reference(hidden: torch.Tensor) -> torch.Tensor:
    """hidden: (..., 2H) = [gate | up]. Returns silu(gate) * up, (..., H), in hidden's dtype."""
    gate, up = hidden.chunk(2, dim=-1)
    return F.silu(gate) * up


def why_not_fused(hidden: torch.Tensor) -> str | None:
    """None when the fused kernel can run on ``hidden``; else the reason."""
    reason = why_triton_cannot_run(hidden)
    if reason is not None:
        return reason
    if hidden.dtype == torch.float64:
        return "float64 activations take the reference (the kernel computes in float32)"
    if hidden.shape[-1] % 2:
        return f"the last dimension ({hidden.shape[-1]}) is not [gate | up] of equal halves"
    return None


def swiglu(hidden: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """:func:`swiglu_reference` through ``impl`` ("auto", "reference" or "triton"; see
    :mod:`mossnet.ops.fused`). The kernel computes in fp32 and rounds once, so in bf16 it is
    at least as accurate as the reference (which rounds silu(gate) before the product)."""
    if not choose("the fused SwiGLU activation", impl, lambda: why_not_fused(hidden), hidden.is_cuda):
        return swiglu_reference(hidden)
    from .swiglu_triton import swiglu_triton

    return swiglu_triton(hidden)
