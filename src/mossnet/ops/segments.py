"""Packed sequences (``cu_seqlens``): which segment each row of the flat axis belongs to.

Computed on the device with fixed shapes (no host synchronisation): a histogram of the
segment ends and a cumulative sum, O(rows + segments).
"""

from __future__ import annotations

import torch


def segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The segment of every row: ``seg[i] = s`` with ``cu[s] <= i < cu[s+1]``.

    Empty segments own no row (a row goes to the non-empty segment that contains it), so this
    equals ``torch.searchsorted(cu[1:], arange(total), right=True)``. It counts, for every row,
    the segment ends at or before it: a histogram of the ends, then a cumulative sum.

    Args:
        cu_seqlens: (S+1,) int32/int64 boundaries, 0 = cu[0] <= ... <= cu[S] = total.
        total: the number of rows M.
    Returns:
        (M,) int64 in [0, S).

    Example:
        >>> segment_ids(torch.tensor([0, 2, 2, 5]), 5).tolist()  # segment 1 is empty
        [0, 0, 2, 2, 2]
    """
    cu = cu_seqlens.to(torch.long)
    ends = cu[1:-1]  # the last end (= total) is after every row
    counts = torch.zeros(total + 1, dtype=torch.long, device=cu.device)
    counts.index_add_(0, ends, torch.ones_like(ends))
    return counts.cumsum(0)[:total]


def segment_positions(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's segment (:func:`segment_ids`) and its position inside that segment.

    Example:
        >>> [t.tolist() for t in segment_positions(torch.tensor([0, 2, 2, 5]), 5)]
        [[0, 0, 2, 2, 2], [0, 1, 0, 1, 2]]
    """
    cu = cu_seqlens.to(torch.long)
    seg = segment_ids(cu, total)
    return seg, torch.arange(total, device=cu.device) - cu[seg]
