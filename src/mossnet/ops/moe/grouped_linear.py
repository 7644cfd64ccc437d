"""One linear layer per expert, applied to rows already grouped by expert.

Executions, all free of host synchronisation except the last:

* CUDA, bf16, Hopper or newer: ``torch._grouped_mm`` (one CUTLASS kernel for all experts).
  Widths that are not multiples of 8 (the MoSSE projection has 2P + 2N + 1 outputs) are padded
  with zero rows/columns, because the kernel needs 16-byte aligned strides.
* CUDA otherwise (fp32, fp16, older GPUs) when the problem is small (decode steps), or inside a
  CUDA-graph capture or ``torch.compile``: every expert on every row in one batched matmul, then
  each row picks its own expert's result (E times the FLOPs, no host sync, fixed shapes).
* Elsewhere (CPU; large non-bf16 problems on CUDA): one ``matmul`` per expert over its
  contiguous slice, which reads the group sizes back to the host -- fine on the CPU, where
  there is no device to stall.
"""

from __future__ import annotations

import torch

# Above this many elements of the (E, M, D_out) all-experts product, non-bf16 CUDA work takes
# the per-expert loop (one host sync) instead of E times the FLOPs.
_DENSE_LIMIT = 1 << 24


_CAPABILITY: dict[int, tuple[int, int]] = {}


def _capability(index: int) -> tuple[int, int]:
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index]


def _grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # The CUTLASS grouped GEMM exists for bf16 on sm90/sm100; elsewhere torch falls back to a
    # loop that copies the offsets to the host.
    return (
        x.is_cuda
        and hasattr(torch, "_grouped_mm")
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and _capability(x.device.index if x.device.index is not None else torch.cuda.current_device())[0] >= 9
    )


def _must_not_sync(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return True
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    M, d_in = x.shape
    d_out = weight.shape[1]
    pad_in, pad_out = _pad8(d_in) - d_in, _pad8(d_out) - d_out
    if pad_in:
        x = torch.nn.functional.pad(x, (0, pad_in))
    if pad_in or pad_out:
        weight = torch.nn.functional.pad(weight, (0, pad_in, 0, pad_out))
    if not torch.compiler.is_compiling() and x.data_ptr() % 16:
        x = x.clone()
    out = torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets)
    # Rows past the last offset are left unwritten by the kernel (whatever the memory held, NaN
    # included): select zeros there rather than multiplying by 0.
    keep = torch.arange(M, device=x.device) < offsets[-1]
    out = torch.where(keep[:, None], out, out.new_zeros(()))
    return out[:, :d_out] if pad_out else out


def _all_experts_then_pick(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    M, E = x.shape[0], weight.shape[0]
    rows = torch.arange(M, device=x.device)
    expert_of_row = torch.searchsorted(offsets, rows.to(offsets.dtype), right=True)  # E past the end
    every = torch.matmul(x, weight.transpose(1, 2))  # (E, M, D_out)
    out = every[expert_of_row.clamp(max=E - 1), rows]
    return out * (expert_of_row < E)[:, None].to(out.dtype)


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
        return _grouped_mm(x, weight, offsets)
    if x.is_cuda and (_must_not_sync(x) or x.shape[0] * weight.shape[0] * weight.shape[1] <= _DENSE_LIMIT):
        return _all_experts_then_pick(x, weight, offsets)
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
