"""The dispatch's stable sort by expert as a counting sort in three Triton launches (reference
and contract: :func:`mossnet.ops.moe.dispatch.dispatch_by_expert_reference`).

With few experts a sort by expert id is a counting sort: count each expert's assignments,
give each expert its first row, and send every assignment to its expert's next free row. In
parallel over blocks of assignments:

1. :func:`block_histogram_kernel`: each block counts its assignments per expert (padding
   tokens go to the virtual expert E).
2. :func:`block_starts_kernel` (one program): per expert, its total (the load) and its first
   row (the exclusive sum over experts); then each block's first row per expert (that plus the
   exclusive sum over earlier blocks).
3. :func:`block_scatter_kernel`: each assignment's row is its block's first row for its expert
   plus its rank among the same expert's assignments earlier in the block. Earlier blocks and
   earlier ranks come first, so the sort is stable, as the reference's.

It writes the sorted expert ids, the source slot and token of every row and, as a by-product,
the inverse permutation (``position``), with no zero fill: PyTorch takes a cast, a multi-pass
radix sort, a zero fill, a scatter-add, a cumsum and its casts, a division, and a scatter for
the inverse. All integer arithmetic: the result equals the reference exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch_grid import cdiv, next_power_of_2

# One block's one-hot table (BLOCK assignments x EB expert columns) stays below this many
# entries; with E = 4 or 9 experts a block holds 1,024 assignments.
TABLE = 16384
MAX_BLOCK = 1024
START_ROWS = 64  # blocks per step of the single-program start pass


@triton.jit
def _keys(expert_ptr, valid_ptr, i, ok, E, TOP_K: tl.constexpr, HAS_VALID: tl.constexpr):
    """(BLOCK,) int32 expert of each assignment: E for a padding token's, -1 past the end."""
    key = tl.load(expert_ptr + i, mask=ok, other=0).to(tl.int32)
    if HAS_VALID:
        keep = tl.load(valid_ptr + i // TOP_K, mask=ok, other=0)
        key = tl.where(keep != 0, key, E)
    return tl.where(ok, key, -1)


@triton.jit
def block_histogram_kernel(expert_ptr, valid_ptr, hist_ptr, N, E, TOP_K: tl.constexpr, HAS_VALID: tl.constexpr,
                           BLOCK: tl.constexpr, EB: tl.constexpr):
    b = tl.program_id(0)
    i = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    key = _keys(expert_ptr, valid_ptr, i, i < N, E, TOP_K, HAS_VALID)
    experts = tl.arange(0, EB)
    onehot = (key[:, None] == experts[None, :]).to(tl.int32)
    tl.store(hist_ptr + b * EB + experts, tl.sum(onehot, axis=0))


@triton.jit
def block_starts_kernel(hist_ptr, start_ptr, counts_ptr, offsets_ptr, n_blocks, E, EB: tl.constexpr,
                        ROWS: tl.constexpr):
    experts = tl.arange(0, EB)
    total = tl.zeros([EB], dtype=tl.int32)
    for first in range(0, n_blocks, ROWS):
        blocks = first + tl.arange(0, ROWS)
        h = tl.load(hist_ptr + blocks[:, None] * EB + experts[None, :], mask=(blocks < n_blocks)[:, None], other=0)
        total += tl.sum(h, axis=0)
    end = tl.cumsum(total, axis=0)  # expert e's rows end at end[e]; the padding expert E sorts last
    tl.store(counts_ptr + experts, total.to(tl.int64), mask=experts < E)
    tl.store(offsets_ptr + experts, end, mask=experts < E)
    running = end - total
    for first in range(0, n_blocks, ROWS):
        blocks = first + tl.arange(0, ROWS)
        in_range = (blocks < n_blocks)[:, None]
        h = tl.load(hist_ptr + blocks[:, None] * EB + experts[None, :], mask=in_range, other=0)
        tl.store(start_ptr + blocks[:, None] * EB + experts[None, :], running[None, :] + tl.cumsum(h, axis=0) - h,
                 mask=in_range)
        running += tl.sum(h, axis=0)


@triton.jit
def block_scatter_kernel(expert_ptr, valid_ptr, start_ptr, sorted_ptr, slot_ptr, token_ptr, position_ptr, N, E,
                         TOP_K: tl.constexpr, HAS_VALID: tl.constexpr, BLOCK: tl.constexpr, EB: tl.constexpr):
    b = tl.program_id(0)
    i = b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    key = _keys(expert_ptr, valid_ptr, i, ok, E, TOP_K, HAS_VALID)
    onehot = (key[:, None] == tl.arange(0, EB)[None, :]).to(tl.int32)
    rank = tl.sum((tl.cumsum(onehot, axis=0) - onehot) * onehot, axis=1)  # same-expert assignments before
    row = (tl.load(start_ptr + b * EB + key, mask=ok, other=0) + rank).to(tl.int64)
    tl.store(position_ptr + i, row, mask=ok)
    tl.store(slot_ptr + row, i, mask=ok)
    tl.store(sorted_ptr + row, key.to(tl.int64), mask=ok)
    tl.store(token_ptr + row, i // TOP_K, mask=ok)


def counting_sort_by_expert(expert_idx: torch.Tensor, valid: torch.Tensor | None, n_experts: int):
    """expert_idx: (n, k) int, contiguous; valid: (n,) bool or None; n*k > 0 and
    n_experts < 256. Returns (expert_sorted, slot, token, position) (n*k,) int64, counts (E,)
    int64 and offsets (E,) int32, as :func:`~.dispatch.dispatch_by_expert_reference` defines them."""
    n, k = expert_idx.shape
    N, device = n * k, expert_idx.device
    EB = next_power_of_2(n_experts + 1)
    block = max(16, min(MAX_BLOCK, TABLE // EB))
    n_blocks = cdiv(N, block)
    hist = torch.empty(n_blocks, EB, dtype=torch.int32, device=device)
    starts = torch.empty_like(hist)
    counts = torch.empty(n_experts, dtype=torch.long, device=device)
    offsets = torch.empty(n_experts, dtype=torch.int32, device=device)
    expert_sorted, slot, token, position = torch.empty(4, N, dtype=torch.long, device=device).unbind(0)
    flat = expert_idx.reshape(-1)
    keep = valid.view(torch.uint8) if valid is not None else flat  # flat: an unread stand-in
    flags = dict(TOP_K=k, HAS_VALID=valid is not None, BLOCK=block, EB=EB)
    block_histogram_kernel[(n_blocks,)](flat, keep, hist, N, n_experts, **flags)
    block_starts_kernel[(1,)](hist, starts, counts, offsets, n_blocks, n_experts, EB=EB, ROWS=START_ROWS)
    block_scatter_kernel[(n_blocks,)](flat, keep, starts, expert_sorted, slot, token, position, N, n_experts,
                                      **flags)
    return expert_sorted, slot, token, position, counts, offsets
