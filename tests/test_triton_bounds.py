"""The interpreter's bounds check (tests/triton_bounds.py) catches a kernel that reads or writes
one element past its tensor, and lets a correctly masked one through. Runs under
``TRITON_INTERPRET=1`` (where tests/conftest.py installs the check); skipped elsewhere."""

from __future__ import annotations

import os

import pytest
import torch

from kernel_device import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET or os.environ.get("MOSSNET_TRITON_BOUNDS", "1") == "0",
                                reason="the bounds check runs inside Triton's CPU interpreter (TRITON_INTERPRET=1)")


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def copy(src, dst, n, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        keep = offs < n + EXTRA  # EXTRA = 1: one element past the end
        tl.store(dst + offs, tl.load(src + offs, mask=keep, other=0.0), mask=offs < n)

    @triton.jit
    def write(dst, n, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(dst + offs, tl.zeros([BLOCK], tl.float32) + 1.0, mask=offs < n + EXTRA)

    @triton.jit
    def add(dst, n, EXTRA: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.atomic_add(dst + offs, tl.zeros([BLOCK], tl.float32) + 1.0, mask=offs < n + EXTRA)

    return copy, write, add


def test_masked_accesses_inside_the_tensors_pass():
    copy, write, add = _kernels()
    src, dst = torch.arange(10, dtype=torch.float32), torch.zeros(10)
    copy[(1,)](src, dst, 10, EXTRA=0, BLOCK=16)
    assert torch.equal(dst, src)
    write[(1,)](dst, 10, EXTRA=0, BLOCK=16)
    add[(1,)](dst, 10, EXTRA=0, BLOCK=16)
    assert torch.equal(dst, torch.full((10,), 2.0))


@pytest.mark.parametrize("which,where", [(0, "copy: load of 1 element"), (1, "write: store of 1 element"),
                                         (2, "add: atomic of 1 element")])
def test_one_element_past_the_end_is_named(which, where):
    kernel = _kernels()[which]
    buf = torch.zeros(64)
    view = buf[:10]  # past the view but inside the storage: allowed (a kernel may address the whole buffer)
    args = (view, torch.zeros(10)) if which == 0 else (view,)
    kernel[(1,)](*args, 10, EXTRA=1, BLOCK=16)
    alone = torch.zeros(10)
    args = (alone, torch.zeros(10)) if which == 0 else (alone,)
    with pytest.raises(Exception, match=where + r".*0 bytes after the end of dst's storage" if which else where):
        kernel[(1,)](*args, 10, EXTRA=1, BLOCK=16)
