"""The decode step's per-token expert products in one Triton kernel (inference only).

    out[i, j] = weight[idx[i, j]] @ x[i, j]

In PyTorch on a GPU (:func:`~.gathered_linear.gathered_linear`) this is a gather that copies the
k chosen experts' matrices, a cast of the copy, and a batched product that reads it again (under
autocast one more cast): four launches and about four times the weight bytes. At batch 1 a
generated token does this four times per layer, and the step is bound by launches and weight
reads. Here each program reads one (token, expert) pair's rows of its expert's matrix in place,
in the weight's own dtype, and accumulates in fp32. Reference: ``gathered_linear``
(``tests/ops/test_gathered_linear.py`` compares them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch_grid import cdiv

BLOCK_OUT = 16  # few output rows per program: at batch 1 there are only n*k pairs to spread over the SMs
BLOCK_IN = 128


@triton.jit
def gathered_gemv_kernel(x_ptr, w_ptr, idx_ptr, out_ptr, SLOTS, D_IN, D_OUT, sxn, sxk, sxd, swe, swo, swi,
                         BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr):
    pair = tl.program_id(0)  # = token * SLOTS + slot
    token = pair // SLOTS
    slot = pair % SLOTS
    expert = tl.load(idx_ptr + pair).to(tl.int64)
    offs_o = tl.program_id(1) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    mo = offs_o < D_OUT
    acc = tl.zeros([BLOCK_OUT], dtype=tl.float32)
    for start in range(0, D_IN, BLOCK_IN):
        offs_i = start + tl.arange(0, BLOCK_IN)
        mi = offs_i < D_IN
        xv = tl.load(x_ptr + token * sxn + slot * sxk + offs_i * sxd, mask=mi, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + expert * swe + offs_o[:, None] * swo + offs_i[None, :] * swi,
                    mask=mo[:, None] & mi[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * xv[None, :], axis=1)
    tl.store(out_ptr + pair * D_OUT + offs_o, acc, mask=mo)


def gathered_linear_triton(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, out_dtype: torch.dtype):
    """x (n, k, D_in) any strides; weight (E, D_out, D_in) any strides; idx (n, k) int.
    Returns (n, k, D_out) in ``out_dtype`` (the products accumulate in fp32)."""
    n, k, d_in = x.shape
    d_out = weight.shape[1]
    out = torch.empty(n, k, d_out, dtype=torch.float32, device=x.device)
    if n * k:
        idx = idx.reshape(-1).contiguous()
        grid = (n * k, cdiv(d_out, BLOCK_OUT))
        gathered_gemv_kernel[grid](x, weight, idx, out, k, d_in, d_out, *x.stride(), *weight.stride(),
                                   BLOCK_OUT=BLOCK_OUT, BLOCK_IN=BLOCK_IN)
    return out.to(out_dtype)
