"""Per-token expert products for a few tokens: the MoE part of the decode step.

The grouped path (:mod:`.grouped_linear`) sorts tokens by expert and runs one product per
expert group; at batch 1 its sort, offsets and per-expert loop cost more than the work.
Here each token's k chosen experts are applied directly and only their weights are read.
"""

from __future__ import annotations

import torch

from mossnet.execution import tracing
from mossnet.ops.fused import choose, why_triton_cannot_run


def _views_usable(x: torch.Tensor, idx: torch.Tensor) -> bool:
    """Eager CPU with few rows: read the chosen experts' weights in place (no gather copy).
    Under torch.compile / torch.export, or on an accelerator (where ``tolist`` would stall the
    device), the batched gather below is used instead."""
    return x.device.type == "cpu" and idx.numel() <= 64 and not tracing()


def why_not_fused(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None when the fused kernel (``gathered_linear_triton.py``) computes this product; else why
    the PyTorch product does."""
    reason = why_triton_cannot_run(x)
    if reason is not None:
        return reason
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return "gradients are on (the kernel is inference-only)"
    if torch.float64 in (x.dtype, weight.dtype):
        return "float64 tensors"
    return None


def _result_dtype(x: torch.Tensor) -> torch.dtype:
    """What the PyTorch product returns: the autocast dtype under autocast on x's device, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def gathered_linear(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, impl: str = "reference") -> torch.Tensor:
    """Per-row expert matrix-vector products for a few tokens (the decode step).

    ``out[i, j] = weight[idx[i, j]] @ x[i, j]``: each of n tokens goes through its k chosen
    experts. Only those experts' weights are read. On the CPU in eager mode each product
    reads a view of the expert's matrix (a gather would first copy k matrices per token,
    which costs more than the product itself at batch 1). Traced (torch.compile /
    torch.export / ONNX) or on an accelerator, it is one gather and one batched product, with
    shapes that do not depend on the routing.

    ``impl`` (the policy's ``fused_ops``): "auto" takes one fused Triton kernel on CUDA without
    gradients (the weights read in place, fp32 accumulation), "reference" the PyTorch product
    below, "triton" the kernel or an error.

    Args:
        x: (n, k, D_in). weight: (E, D_out, D_in). idx: (n, k) int expert ids in [0, E).
    Returns:
        (n, k, D_out) in x's dtype, or the autocast dtype under autocast (weights are cast to x's
        dtype, as :func:`grouped_linear` does).

    Example:
        >>> x, w = torch.randn(2, 2, 3), torch.randn(4, 5, 3)
        >>> idx = torch.tensor([[1, 3], [0, 1]])
        >>> y = gathered_linear(x, w, idx)
        >>> torch.allclose(y[0, 1], w[3] @ x[0, 1]) and torch.allclose(y[1, 0], w[0] @ x[1, 0])
        True
    """
    if choose("the fused decode expert product", impl, lambda: why_not_fused(x, weight), x.is_cuda):
        from .gathered_linear_triton import gathered_linear_triton

        return gathered_linear_triton(x, weight, idx, _result_dtype(x))
    n, k, d_in = x.shape
    if _views_usable(x, idx):
        rows = x.reshape(n * k, d_in)
        outs = [
            torch.mv(weight[e].to(x.dtype), rows[r]) for r, e in enumerate(idx.reshape(-1).tolist())
        ]
        return torch.stack(outs).view(n, k, weight.shape[1])
    # index_select (ONNX Gather, which int8 weight quantizers handle) rather than weight[idx].
    w = weight.index_select(0, idx.reshape(-1)).view(n, k, *weight.shape[1:]).to(x.dtype)  # (n, k, D_out, D_in)
    return torch.matmul(w, x[..., None]).squeeze(-1)
