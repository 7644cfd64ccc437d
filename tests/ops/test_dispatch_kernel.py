"""The counting-sort dispatch (Triton) against the reference's stable sort: every field equal,
exactly, with padding tokens, one expert, experts nobody chose, odd assignment counts, and more
blocks than the start pass reads in one step.

    TRITON_INTERPRET=1 pytest tests/ops/test_dispatch_kernel.py   # CPU
    pytest tests/ops/test_dispatch_kernel.py                      # GPU
"""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE, needs_kernels
from mossnet.errors import ConfigError
from mossnet.ops.moe.dispatch import dispatch_by_expert, dispatch_by_expert_reference

FIELDS = ("token", "expert", "slot", "offsets", "counts", "position")


def assignments(n: int, k: int, E: int, seed: int, padded: bool):
    """(n, k) distinct experts per token, three quarters of the tokens choosing expert 0 first
    (a skewed load), and a padding mask."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(n)])
    if E > 1:
        first = idx[: n * 3 // 4]
        first[first == 0] = first[:, :1].expand_as(first)[first == 0]  # move 0 out of the later slots
        first[:, 0] = 0
    valid = (torch.rand(n, generator=g) > 0.3) if padded else None
    return idx.to(DEVICE), None if valid is None else valid.to(DEVICE)


def assert_same(got, want):
    for field in FIELDS:
        a, b = getattr(got, field), getattr(want, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert torch.equal(a, b), field
    assert got.every_row_routed == want.every_row_routed


@needs_kernels
@pytest.mark.parametrize("n,k,E", [(1, 1, 2), (37, 2, 4), (1501, 2, 4), (129, 9, 9), (50, 1, 1), (77, 3, 33)])
@pytest.mark.parametrize("padded", [False, True])
def test_counting_sort_equals_the_stable_sort(n, k, E, padded):
    idx, valid = assignments(n, k, E, seed=n + E, padded=padded)
    assert_same(dispatch_by_expert(idx, valid, E, impl="triton"), dispatch_by_expert_reference(idx, valid, E))


@needs_kernels
def test_many_blocks_and_unchosen_experts():
    """255 experts: blocks of 64 assignments, so 5,000 of them make 79 blocks (the start pass
    reads 64 per step); most experts are never chosen."""
    n, k, E = 2500, 2, 255
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 40, (n, k), generator=g).to(DEVICE)  # repeats inside a row are allowed
    valid = (torch.rand(n, generator=g) > 0.1).to(DEVICE)
    got = dispatch_by_expert(idx, valid, E, impl="triton")
    assert_same(got, dispatch_by_expert_reference(idx, valid, E))
    assert int(got.counts[40:].sum()) == 0


@needs_kernels
def test_int32_ids_and_a_transposed_table():
    """Router ids of any integer dtype and layout give the same rows."""
    idx, valid = assignments(45, 2, 4, seed=1, padded=True)
    want = dispatch_by_expert_reference(idx, valid, 4)
    assert_same(dispatch_by_expert(idx.to(torch.int32), valid, 4, impl="triton"), want)
    assert_same(dispatch_by_expert(idx.T.contiguous().T, valid, 4, impl="triton"), want)


def test_what_the_kernel_refuses():
    """256 experts or more, and an empty batch, take the reference under "auto" and are an error
    under "triton"; "reference" never asks."""
    device = DEVICE or "cpu"
    idx = torch.zeros(3, 1, dtype=torch.long, device=device)
    assert_same(dispatch_by_expert(idx, None, 300, impl="auto"), dispatch_by_expert_reference(idx, None, 300))
    empty = torch.zeros(0, 2, dtype=torch.long, device=device)
    assert dispatch_by_expert(empty, None, 4, impl="auto").token.numel() == 0
    with pytest.raises(ConfigError, match="256"):
        if DEVICE is None:
            pytest.skip("no Triton kernels here")
        dispatch_by_expert(idx, None, 300, impl="triton")
