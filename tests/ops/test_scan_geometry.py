"""The packed scan's chunk table: the one-launch Triton kernel against its tensor-op reference,
slot by slot, with empty sequences, one sequence, many, and chunk lengths that do and do not
divide the sequences. On CUDA, or on the CPU under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

from kernel_device import DEVICE, needs_kernels

triton = pytest.importorskip("triton", reason="Triton is not installed (CPU CI)")
from mossnet.ops.mosse.triton.geometry import Geometry, chunk_table_reference  # noqa: E402


def _boundaries(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)


CASES = {
    "one sequence": [100],
    "empty ones between": [0, 5, 0, 0, 64, 1, 0],
    "all empty but the last": [0, 0, 0, 7],
    "exact chunks": [64, 128, 64],
    "many": [int(n) for n in torch.randint(0, 150, (300,), generator=torch.Generator().manual_seed(0))],
}


@needs_kernels
@pytest.mark.parametrize("L", [16, 64])
@pytest.mark.parametrize("case", list(CASES))
def test_the_kernel_builds_the_reference_table(case, L):
    cu = _boundaries(CASES[case]).to(DEVICE)
    total = int(cu[-1])
    geo = Geometry(1, total, cu, L, DEVICE)
    want = chunk_table_reference(cu, L, geo.U)
    for name, got, ref in zip(("cu", "cu_ch", "ts", "te"), (geo.cu, geo.cu_ch, geo.ts, geo.te), want):
        assert got.dtype == torch.int32, name
        assert torch.equal(got, ref), name


def test_the_reference_by_hand():
    # Sequences of 5, 0 and 3 tokens with L = 2: chunks [0,2) [2,4) [4,5) | none | [5,7) [7,8),
    # then surplus slots (empty ranges) up to U = ceil(8 / 2) + 3 = 7.
    cu = _boundaries([5, 0, 3])
    cu32, cu_ch, ts, te = chunk_table_reference(cu, 2, 7)
    assert cu_ch.tolist() == [0, 3, 3, 5]
    assert ts[:5].tolist() == [0, 2, 4, 5, 7] and te[:5].tolist() == [2, 4, 5, 7, 8]
    assert (te[5:] <= ts[5:]).all()
