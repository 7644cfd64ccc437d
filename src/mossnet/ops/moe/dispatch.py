"""Token -> expert assignments, sorted by expert (no host sync, fixed shapes).

A router gives each of n tokens k experts. Flattened, that is n*k assignments. Sorting them
by expert id puts every expert's rows next to each other, so one grouped GEMM (or one matmul
per expert) does the work. Padding tokens are sent to a virtual expert ``n_experts`` that
sorts last and lies beyond ``offsets[-1]``: they are never computed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mossnet.ops.fused import choose, why_triton_cannot_run


@dataclass
class ExpertDispatch:
    """Assignments in expert order.

    Attributes:
        token: (n*k,) source token of each sorted row.
        expert: (n*k,) expert of each sorted row (``n_experts`` for dropped padding rows).
        slot: (n*k,) position of each sorted row in the flattened (n, k) assignment table.
        offsets: (n_experts,) int32 cumulative row ends per expert (``torch._grouped_mm``'s
            convention); rows from ``offsets[-1]`` on are dropped.
        counts: (n_experts,) tokens per expert (the load statistic), int64.
        every_row_routed: no row was dropped (no padding tokens): ``offsets[-1] == n*k``,
            known without reading the device.
    """

    token: torch.Tensor
    expert: torch.Tensor
    slot: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    every_row_routed: bool = False

    @functools.cached_property
    def position(self) -> torch.Tensor:
        """(n*k,) the inverse of the sort: the sorted row of each flattened (token, slot)
        assignment. Computed once, on first use, for the fused gather and combine."""
        return torch.empty_like(self.slot).scatter_(0, self.slot, torch.arange(self.slot.numel(), device=self.slot.device))


def dispatch_by_expert(expert_idx: torch.Tensor, valid: torch.Tensor | None, n_experts: int,
                       impl: str = "auto") -> ExpertDispatch:
    """Sort assignments by expert: :func:`dispatch_by_expert_reference` through ``impl`` ("auto",
    "reference" or "triton"; the policy's ``fused_ops``). The kernel is a counting sort in three
    launches (:mod:`.dispatch_triton`) for fewer than 256 experts, with the inverse permutation
    (``position``) as a by-product; the result is the same, exactly.

    Example:
        >>> d = dispatch_by_expert(torch.tensor([[1, 0], [1, 2]]), None, 3)
        >>> d.token.tolist(), d.expert.tolist(), d.offsets.tolist()
        ([0, 0, 1, 1], [0, 1, 1, 2], [1, 3, 4])
    """
    if not choose("the counting-sort dispatch", impl, lambda: _why_not_counting_sort(expert_idx, n_experts),
                  expert_idx.is_cuda):
        return dispatch_by_expert_reference(expert_idx, valid, n_experts)
    from .dispatch_triton import counting_sort_by_expert

    expert_sorted, slot, token, position, counts, offsets = counting_sort_by_expert(
        expert_idx.contiguous(), None if valid is None else valid.contiguous(), n_experts)
    dispatch = ExpertDispatch(token=token, expert=expert_sorted, slot=slot, offsets=offsets, counts=counts,
                              every_row_routed=valid is None)
    dispatch.__dict__["position"] = position  # the cached_property's value: the kernel wrote it
    return dispatch


def _why_not_counting_sort(expert_idx: torch.Tensor, n_experts: int) -> str | None:
    reason = why_triton_cannot_run(expert_idx)
    if reason is not None:
        return reason
    if n_experts >= 256:
        return f"{n_experts} experts (the counting sort's table holds fewer than 256)"
    if expert_idx.numel() == 0:
        return "no assignments"
    return None


def dispatch_by_expert_reference(expert_idx: torch.Tensor, valid: torch.Tensor | None,
                                 n_experts: int) -> ExpertDispatch:
    """Sort assignments by expert, stably (a token's rows stay in time order in its expert).

    Args:
        expert_idx: (n, k) int expert of each assignment.
        valid: (n,) bool, False for padding tokens (routed nowhere), or None.
        n_experts: E.

    Example:
        >>> d = dispatch_by_expert_reference(torch.tensor([[1, 0], [1, 2]]), None, 3)
        >>> d.token.tolist(), d.expert.tolist(), d.offsets.tolist()
        ([0, 0, 1, 1], [0, 1, 1, 2], [1, 3, 4])
    """
    n, k = expert_idx.shape
    flat = expert_idx.reshape(-1).long()
    if valid is not None:
        flat = torch.where(valid.repeat_interleave(k), flat, torch.full_like(flat, n_experts))
    # A stable sort keeps tokens in time order inside each expert's group. The keys are sorted as
    # the narrowest integer that holds 0..E: CUDA's radix sort makes one pass per key byte, so
    # int64 keys cost eight passes where uint8 keys (E < 256) cost one.
    key_dtype = torch.uint8 if n_experts < 256 else torch.int16 if n_experts < 2**15 - 1 else torch.int64
    expert_sorted, slot = torch.sort(flat.to(key_dtype), stable=True)
    expert_sorted = expert_sorted.long()
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    counts = counts[:n_experts]
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    return ExpertDispatch(token=slot // k, expert=expert_sorted, slot=slot, offsets=offsets, counts=counts,
                          every_row_routed=valid is None)
