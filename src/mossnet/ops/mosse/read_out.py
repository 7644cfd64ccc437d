"""The MoSSE read-out after the scan, per dispatched row (spec sections 2.6-2.7):

    y   = y_folded / scale + skip_D * x
    out = RMSNorm_P(y * SiLU(z + z_bias)) * norm_weight

``y_folded`` is the compact scan's output with each row's decay rate folded into its step
(``layers/mosse.py``, ``_scan``): dividing by ``scale`` gives the true y. The router gate is
applied afterwards, by the caller.

:func:`read_out_reference` is the definition, in PyTorch (the gated norm is
``layers/norm.gated_rms_norm``, which decode uses too); :func:`read_out` picks it or the fused
Triton kernel (``triton/read_out.py``) by the policy's ``fused_ops``.
"""

from __future__ import annotations

import torch

from mossnet.layers.norm import gated_rms_norm  # the gated norm's one definition (decode uses it too)
from mossnet.ops.fused import choose, why_triton_cannot_run


def unfold_output(y_folded: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, skip_D: torch.Tensor) -> torch.Tensor:
    """The true scan output plus the skip term, y = y_folded / scale + skip_D * x, in scale's
    (compute) dtype: the read-out's first step. Shapes as :func:`read_out_reference`."""
    cdt = scale.dtype
    return y_folded.to(cdt) / scale[:, None] + skip_D * x.to(cdt)


def read_out_reference(y_folded: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, skip_D: torch.Tensor,
                       z: torch.Tensor, z_bias: torch.Tensor | None, norm_weight: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """y_folded, x, z: (M, P) any float dtype; scale: (M,) and skip_D, z_bias, norm_weight: (M, P)
    in the compute dtype (fp32, or fp64 for fp64 layers). Returns (M, P) in the compute dtype."""
    y = unfold_output(y_folded, scale, x, skip_D)
    if z_bias is not None:
        z = z + z_bias
    return gated_rms_norm(y, z, norm_weight, eps)


def why_not_fused(x: torch.Tensor, scale: torch.Tensor) -> str | None:
    """None when the fused kernel can run on these tensors; else the reason."""
    reason = why_triton_cannot_run(x)
    if reason is not None:
        return reason
    from .triton.read_out import MAX_WIDTH

    if scale.dtype != torch.float32:
        return f"the read-out computes in {scale.dtype}; the kernel computes in float32"
    if x.shape[-1] > MAX_WIDTH:
        return f"rows of width {x.shape[-1]} are wider than the kernel's {MAX_WIDTH}"
    return None


def read_out(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps: float, impl: str = "auto") -> torch.Tensor:
    """The read-out through ``impl``: "reference", "triton" (an error where it cannot run) or
    "auto" (Triton where it can run, else the reference; the reason logged once at INFO, so a
    CPU run stays quiet). Arguments as :func:`read_out_reference`."""
    if not choose("the fused MoSSE read-out", impl, lambda: why_not_fused(x, scale), x.is_cuda):
        return read_out_reference(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps)
    from .triton.read_out import read_out_triton

    return read_out_triton(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps)
