"""One linear layer per expert, applied to rows already grouped by expert.

Implementations (``grouped_linear(..., impl=)``; the execution policy's ``expert_matmul``):

* ``"grouped_mm"``: ``torch._grouped_mm``, one CUTLASS kernel for all experts (CUDA, bf16,
  Hopper or newer). Widths that are not multiples of 8 (the MoSSE projection has 2P + 2N + 1
  outputs) are padded with zero rows/columns: the kernel needs 16-byte aligned strides.
* ``"all_experts"``: every expert on every row in one batched matmul, then each row keeps its
  own expert's result. E times the FLOPs, but no host read and shapes independent of the
  routing: what CUDA-graph capture, ``torch.compile`` on CUDA and ``torch.export`` need.
* ``"loop"``: one ``matmul`` per expert over its contiguous slice. Reads the group sizes back
  to the host: fine on the CPU, where there is no device to stall. Under ``torch.compile`` it
  runs as a custom op (``mossnet::per_expert_linear``), so that the read does not split the graph.
* ``"auto"``: ``grouped_mm`` where it exists; else ``all_experts`` when exporting, when a CUDA
  graph is being captured or compiled, or for small CUDA problems (decode steps); else ``loop``.
"""

from __future__ import annotations

import torch

from mossnet.errors import ConfigError
from mossnet.execution import EXPERT_MATMULS, compiling, exporting, may_read_back

# Above this many elements of the (E, M, D_out) all-experts product, "auto" sends non-bf16
# CUDA work to the per-expert loop (one host read) instead of E times the FLOPs.
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


def resolve_expert_matmul(impl: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """Which implementation ``impl`` means for rows like ``x`` and weights like ``weight``."""
    if impl not in EXPERT_MATMULS:
        raise ConfigError(f"grouped_linear: unknown impl {impl!r}; expected one of {EXPERT_MATMULS}")
    if impl == "grouped_mm" and not _grouped_mm_usable(x, weight):
        raise ConfigError("grouped_linear: impl='grouped_mm' needs bf16 CUDA tensors on a Hopper (sm90) or newer GPU")
    if impl != "auto":
        return impl
    if _grouped_mm_usable(x, weight):
        return "grouped_mm"
    if exporting():
        return "all_experts"
    if x.is_cuda and (not may_read_back(x) or x.shape[0] * weight.shape[0] * weight.shape[1] <= _DENSE_LIMIT):
        return "all_experts"
    return "loop"


def product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert products of rows like ``x`` run in: autocast's on CUDA under autocast
    (the products are matmuls, which autocast lowers), else x's own. The one place this is decided
    for :func:`grouped_linear`, so that a gather feeding it can produce that dtype directly."""
    if torch.is_autocast_enabled() and x.is_cuda:
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, every_row_routed: bool = False) -> torch.Tensor:
    M, d_in = x.shape
    d_out = weight.shape[1]
    pad_in, pad_out = _pad8(d_in) - d_in, _pad8(d_out) - d_out
    if pad_in:
        x = torch.nn.functional.pad(x, (0, pad_in))
    if pad_in or pad_out:
        weight = torch.nn.functional.pad(weight, (0, pad_in, 0, pad_out))
    if not compiling() and x.data_ptr() % 16:
        x = x.clone()
    out = torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets)
    if not every_row_routed:
        # Rows past the last offset are left unwritten by the kernel (whatever the memory held,
        # NaN included): select zeros there rather than multiplying by 0.
        keep = torch.arange(M, device=x.device) < offsets[-1]
        out = torch.where(keep[:, None], out, out.new_zeros(()))
    return out[:, :d_out] if pad_out else out


def _all_experts_then_pick(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor,
                           every_row_routed: bool = False) -> torch.Tensor:
    M, E = x.shape[0], weight.shape[0]
    rows = torch.arange(M, device=x.device)
    # searchsorted(offsets, rows, right=True) as a comparison count (ONNX has no searchsorted).
    expert_of_row = (rows[:, None] >= offsets.to(torch.int64)[None, :]).sum(1)  # E past the end
    every = torch.matmul(x, weight.transpose(1, 2))  # (E, M, D_out)
    out = every[expert_of_row.clamp(max=E - 1), rows]
    return out if every_row_routed else out * (expert_of_row < E)[:, None].to(out.dtype)


def _expert_row_slices(offsets: torch.Tensor):
    """(expert, slice of its rows) for every expert with rows, from the cumulative row ends
    ``offsets`` (read back to the host once)."""
    start = 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            yield e, slice(start, end)
        start = end


def _per_expert_product(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], weight.shape[1])  # dropped rows stay zero: no mask to skip
    for e, rows in _expert_row_slices(offsets):
        out[rows] = x[rows] @ weight[e].T
    return out


# Under torch.compile the loop's host read (offsets.tolist()) would end the graph, and each
# expert's slice would start a new one (a one-layer model traced as 33 graphs, each compiled by
# itself). As custom ops the loop and its weight gradient are single nodes whose host reads
# happen when they run (free on the CPU, where "auto" picks the loop), so the layer compiles as
# one graph.
@torch.library.custom_op("mossnet::per_expert_linear", mutates_args=())
def _per_expert_linear_op(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return _per_expert_product(x, weight, offsets)


@_per_expert_linear_op.register_fake
def _(x, weight, offsets):
    return x.new_empty(x.shape[0], weight.shape[1])


@torch.library.custom_op("mossnet::per_expert_linear_weight_grad", mutates_args=())
def _per_expert_weight_grad_op(grad: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(E, D_out, D_in): ``grad[rows of e].T @ x[rows of e]`` per expert (zero for empty ones)."""
    out = grad.new_zeros(offsets.shape[0], grad.shape[1], x.shape[1])
    for e, rows in _expert_row_slices(offsets):
        out[e] = grad[rows].T @ x[rows]
    return out


@_per_expert_weight_grad_op.register_fake
def _(grad, x, offsets):
    return grad.new_empty(offsets.shape[0], grad.shape[1], x.shape[1])


def _per_expert_linear_setup(ctx, inputs, output):
    x, weight, offsets = inputs
    ctx.save_for_backward(x, weight, offsets)


def _per_expert_linear_backward(ctx, grad):
    x, weight, offsets = ctx.saved_tensors
    # Rows past offsets[-1] were not multiplied: their gradient stays zero, as the loop leaves it.
    grad_x = _per_expert_linear_op(grad, weight.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
    grad_w = _per_expert_weight_grad_op(grad, x, offsets) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None


_per_expert_linear_op.register_autograd(_per_expert_linear_backward, setup_context=_per_expert_linear_setup)


def _loop(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, every_row_routed: bool = False) -> torch.Tensor:
    # Eagerly the plain loop: the custom op's dispatch would only add host time per call.
    if compiling():
        return _per_expert_linear_op(x, weight, offsets)
    return _per_expert_product(x, weight, offsets)


_IMPLS = {"grouped_mm": _grouped_mm, "all_experts": _all_experts_then_pick, "loop": _loop}


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, impl: str = "auto",
                   every_row_routed: bool = False) -> torch.Tensor:
    """Rows of group g are multiplied by ``weight[g].T``.

    Args:
        x: (M, D_in) rows sorted by expert.
        weight: (E, D_out, D_in), one ``nn.Linear``-style matrix per expert.
        offsets: (E,) int32 cumulative ends of each expert's rows.
        impl: "auto" | "grouped_mm" | "all_experts" | "loop" (see the module docstring).
        every_row_routed: the caller knows that ``offsets[-1] == M`` (no padding rows were
            dropped: a batch without padding). The result is then not masked, which saves a
            select over the whole (M, D_out) output and its gradient. Pass True only when that
            holds: with dropped rows the result would hold whatever the grouped GEMM left there.
    Returns:
        (M, D_out); rows past ``offsets[-1]`` are zero.

    Example:
        >>> x, w = torch.randn(5, 3), torch.randn(2, 4, 3)
        >>> y = grouped_linear(x, w, torch.tensor([2, 4], dtype=torch.int32))
        >>> torch.allclose(y[:2], x[:2] @ w[0].T) and torch.allclose(y[2:4], x[2:4] @ w[1].T) and bool((y[4] == 0).all())
        True
    """
    dtype = product_dtype(x)
    x, weight = x.to(dtype), weight.to(dtype)
    return _IMPLS[resolve_expert_matmul(impl, x, weight)](x, weight, offsets, every_row_routed)


def grouped_linear_reference(x: torch.Tensor, weight: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
    """Row by row: ``x[i] @ weight[expert_of_row[i]].T`` (rows with expert id E are zero)."""
    E = weight.shape[0]
    padded = torch.cat([weight, weight.new_zeros(1, *weight.shape[1:])])
    return torch.einsum("mi,moi->mo", x, padded[expert_of_row.clamp(max=E)])
