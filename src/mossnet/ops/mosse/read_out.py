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

import functools
import logging

import torch

from mossnet.errors import ConfigError
from mossnet.execution import FUSED_OPS, tracing
from mossnet.layers.norm import gated_rms_norm  # the gated norm's one definition (decode uses it too)

log = logging.getLogger(__name__)


def read_out_reference(y_folded: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, skip_D: torch.Tensor,
                       z: torch.Tensor, z_bias: torch.Tensor | None, norm_weight: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """y_folded, x, z: (M, P) any float dtype; scale: (M,) and skip_D, z_bias, norm_weight: (M, P)
    in the compute dtype (fp32, or fp64 for fp64 layers). Returns (M, P) in the compute dtype."""
    cdt = scale.dtype
    y = y_folded.to(cdt) / scale[:, None] + skip_D * x.to(cdt)
    if z_bias is not None:
        z = z + z_bias
    return gated_rms_norm(y, z, norm_weight, eps)


@functools.cache
def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


def why_not_fused(x: torch.Tensor, scale: torch.Tensor) -> str | None:
    """None when the fused kernel can run on these tensors; else the reason."""
    missing = _triton_missing()
    if missing is not None:
        return missing
    from .triton.function import interpreting
    from .triton.read_out import MAX_WIDTH

    if x.device.type != "cuda" and not (interpreting() and x.device.type == "cpu"):
        return f"tensors are on {x.device.type}, not CUDA"
    if scale.dtype != torch.float32:
        return f"the read-out computes in {scale.dtype}; the kernel computes in float32"
    if x.shape[-1] > MAX_WIDTH:
        return f"rows of width {x.shape[-1]} are wider than the kernel's {MAX_WIDTH}"
    if tracing():
        return "inside torch.compile or torch.export (the reference is traced instead)"
    return None


@functools.cache
def _say_once(reason: str) -> None:
    log.info("mossnet: the MoSSE read-out runs its PyTorch reference: %s", reason)


def read_out(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps: float, impl: str = "auto") -> torch.Tensor:
    """The read-out through ``impl``: "reference", "triton" (an error where it cannot run) or
    "auto" (Triton where it can run, else the reference; the reason logged once at INFO, so a
    CPU run stays quiet). Arguments as :func:`read_out_reference`."""
    if impl not in FUSED_OPS:
        raise ConfigError(f"fused_ops must be one of {FUSED_OPS}, got {impl!r}")
    if impl == "reference":
        return read_out_reference(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps)
    reason = why_not_fused(x, scale)
    if reason is not None:
        if impl == "triton":
            raise ConfigError(f"fused_ops='triton': the fused MoSSE read-out cannot run here: {reason}")
        if x.is_cuda:
            _say_once(reason)
        return read_out_reference(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps)
    from .triton.read_out import read_out_triton

    return read_out_triton(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps)
