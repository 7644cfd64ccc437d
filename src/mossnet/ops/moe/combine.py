"""The two moves between tokens and expert rows in a routed layer (:mod:`.dispatch` sorts the
rows by expert):

* :func:`gather_token_rows`, dispatch: each (token, expert) row gets a copy of its token, in the
  dtype the expert products run in;
* :func:`combine`: each token's k expert outputs, weighted by their gates and summed back onto
  the token (spec section 3).

Each is the other's transpose, so each one's backward is the other's forward. The PyTorch
references and the choice of the fused Triton kernels (``combine_triton.py``) by the policy's
``fused_ops``.
"""

from __future__ import annotations

import torch

from mossnet.ops.fused import choose, why_triton_cannot_run

from .dispatch import ExpertDispatch
from .grouped_linear import product_dtype


def gather_token_rows_reference(u: torch.Tensor, d: ExpertDispatch) -> torch.Tensor:
    """u: (n, D) tokens. Returns (n*k, D): row p is u[d.token[p]], in :func:`~.grouped_linear.
    product_dtype` (the gather then the cast; the gather's gradient is a scatter-add)."""
    return u.index_select(0, d.token).to(product_dtype(u))


def gather_token_rows(u: torch.Tensor, d: ExpertDispatch, impl: str = "auto") -> torch.Tensor:
    """:func:`gather_token_rows_reference` through ``impl`` ("auto", "reference" or "triton").
    The kernel casts while it copies (no full-width copy in u's dtype first), and its backward
    sums each token's k row gradients by gathering them (no zero fill, no atomic scatter-add)."""
    if not choose("the fused token gather", impl, lambda: why_not_fused(u), u.is_cuda):
        return gather_token_rows_reference(u, d)
    from .combine_triton import gather_token_rows_triton

    return gather_token_rows_triton(u, d.token, d.position, product_dtype(u))


def combine_reference(rows: torch.Tensor, gates: torch.Tensor, d: ExpertDispatch) -> torch.Tensor:
    """rows: (n*k, D) expert outputs in the dispatch's (expert-sorted) order; gates: (n, k).
    Returns out (n, D) in rows' dtype, out[t] = sum_j gates[t, j] * (row of assignment (t, j)):
    a scatter-add onto the tokens (padding tokens have zero gates and zero rows)."""
    n = gates.shape[0]
    weighted = rows * gates.reshape(-1).index_select(0, d.slot)[:, None].to(rows.dtype)
    return rows.new_zeros(n, rows.shape[1]).index_add(0, d.token, weighted)


def why_not_fused(*tensors: torch.Tensor) -> str | None:
    """None when the fused kernels can run on these tensors (the first decides the device);
    else the reason."""
    reason = why_triton_cannot_run(tensors[0])
    if reason is not None:
        return reason
    if any(t.dtype == torch.float64 for t in tensors):
        return "float64 inputs take the reference (the kernels compute in float32)"
    return None


def combine(rows: torch.Tensor, gates: torch.Tensor, d: ExpertDispatch, impl: str = "auto") -> torch.Tensor:
    """:func:`combine_reference` through ``impl`` ("auto", "reference" or "triton"; see
    :mod:`mossnet.ops.fused`). The kernel gathers each token's k rows instead of scattering
    into them (no atomics, no zero-filled output, the same sum in any run) and sums in fp32."""
    if not choose("the fused expert combine", impl, lambda: why_not_fused(rows, gates), rows.is_cuda):
        return combine_reference(rows, gates, d)
    from .combine_triton import combine_triton

    return combine_triton(rows, gates, d.position)
