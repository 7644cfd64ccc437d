"""RMSNorm, and the per-expert gated RMSNorm of the MoSSE read-out (spec section 2.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # fp32 for half types; fp64 stays fp64 (the float64 identity tests need full precision).
    return t.to(torch.promote_types(t.dtype, torch.float32))


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim in fp32 (fp64 for fp64 input) and scale by ``weight``;
    returns x's dtype. The formula written out: what :func:`rms_norm` must equal."""
    x32 = _at_least_fp32(x)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * _at_least_fp32(weight)).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rms_norm_reference` through ``F.rms_norm``, in the same precision.

    x: (..., dim); weight: (dim,). On CUDA, torch runs it as one fused kernel forward and one
    backward (``aten._fused_rms_norm``), where the written-out formula takes about five launches
    forward and ten backward; a model has 2 * n_layers + 1 of these norms.
    """
    x32 = _at_least_fp32(x)
    return F.rms_norm(x32, weight.shape, weight.to(x32.dtype), eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim: (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm_P(y * SiLU(z))`` with one weight vector per expert: gate first, then norm
    (Mamba-2's order; normalising before the gate would be a different function).

    Args:
        y, z: (..., E, P). weight: (E, P) (or broadcastable, e.g. gathered (batch, k, P)).
    Returns:
        (..., E, P) in fp32 (fp64 for fp64 inputs).
    """
    gated = _at_least_fp32(y) * nn.functional.silu(_at_least_fp32(z))
    return gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + eps) * _at_least_fp32(weight)
