"""One linear layer per expert, applied to rows already grouped by expert.

Fast path: ``torch._grouped_mm`` (one kernel for all experts; CUDA, bf16, no host sync).
Elsewhere: one ``matmul`` per expert over its contiguous slice, which reads the group sizes
back to the host -- fine on the CPU, where there is no device to stall.
"""

from __future__ import annotations

import torch


def _grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.is_cuda
        and hasattr(torch, "_grouped_mm")
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.shape[-1] % 8 == 0
        and weight.shape[1] % 8 == 0
    )


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of group g are multiplied by ``weight[g].T``.

    Args:
        x: (M, D_in) rows sorted by expert.
        weight: (E, D_out, D_in), one ``nn.Linear``-style matrix per expert.
        offsets: (E,) int32 cumulative ends of each expert's rows.
    Returns:
        (M, D_out); rows past ``offsets[-1]`` are zero.

    Example:
        >>> x, w = torch.randn(5, 3), torch.randn(2, 4, 3)
        >>> y = grouped_linear(x, w, torch.tensor([2, 4], dtype=torch.int32))
        >>> torch.allclose(y[:2], x[:2] @ w[0].T) and torch.allclose(y[2:4], x[2:4] @ w[1].T) and bool((y[4] == 0).all())
        True
    """
    if torch.is_autocast_enabled() and x.is_cuda:
        dtype = torch.get_autocast_dtype("cuda")
        x, weight = x.to(dtype), weight.to(dtype)
    elif weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    if _grouped_mm_usable(x, weight):
        out = torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets)
        # Rows past the last offset are left unwritten by the kernel: zero them explicitly.
        keep = torch.arange(x.shape[0], device=x.device) < offsets[-1]
        return out * keep[:, None].to(out.dtype)
    out = x.new_zeros(x.shape[0], weight.shape[1])
    ends = offsets.tolist()
    start = 0
    for e, end in enumerate(ends):
        if end > start:
            out[start:end] = x[start:end] @ weight[e].T
        start = end
    return out


def grouped_linear_reference(x: torch.Tensor, weight: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
    """Row by row: ``x[i] @ weight[expert_of_row[i]].T`` (rows with expert id E are zero)."""
    E = weight.shape[0]
    padded = torch.cat([weight, weight.new_zeros(1, *weight.shape[1:])])
    return torch.einsum("mi,moi->mo", x, padded[expert_of_row.clamp(max=E)])
