"""silu(gate) * up in one Triton kernel each way (reference and contract:
:func:`mossnet.ops.moe.swiglu.swiglu_reference`).

In PyTorch the activation is two launches forward (silu, product) and about four backward, each a
full pass over (M, H) or (M, 2H). Here the forward reads [gate | up] once and writes the product;
the backward reads them and the output gradient once and writes both halves of the input gradient,
recomputing the sigmoid instead of saving it. Arithmetic is fp32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..function_call import apply_function
from ..launch_grid import cdiv

BLOCK_M = 16
BLOCK_H = 128


@triton.jit
def _tile(h_ptr, M, H, sh, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < M)[:, None] & (cols < H)[None, :]
    at = rows[:, None].to(tl.int64) * sh + cols[None, :]
    gate = tl.load(h_ptr + at, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(h_ptr + at + H, mask=mask, other=0.0).to(tl.float32)
    return rows, cols, mask, gate, up


@triton.jit
def swiglu_fwd_kernel(h_ptr, out_ptr, M, H, sh, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, cols, mask, gate, up = _tile(h_ptr, M, H, sh, BLOCK_M, BLOCK_H)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + rows[:, None].to(tl.int64) * H + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(h_ptr, dout_ptr, dh_ptr, M, H, sh, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, cols, mask, gate, up = _tile(h_ptr, M, H, sh, BLOCK_M, BLOCK_H)
    r = rows[:, None].to(tl.int64)
    dout = tl.load(dout_ptr + r * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    # d silu(g) / dg = sig(g) * (1 + g * (1 - sig(g)))
    dgate = dout * up * sig * (1.0 + gate * (1.0 - sig))
    dup = dout * gate * sig
    at = r * (2 * H) + cols[None, :]
    tl.store(dh_ptr + at, dgate.to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(dh_ptr + at + H, dup.to(dh_ptr.dtype.element_ty), mask=mask)


def _grid(M: int, H: int):
    return (cdiv(M, BLOCK_M), cdiv(H, BLOCK_H))


class SwiGLUTriton(torch.autograd.Function):
    """out (M, H) = silu(hidden[:, :H]) * hidden[:, H:] for hidden (M, 2H) with unit column stride."""

    @staticmethod
    def forward(ctx, hidden):
        M, H = hidden.shape[0], hidden.shape[1] // 2
        out = hidden.new_empty(M, H)
        if M and H:
            swiglu_fwd_kernel[_grid(M, H)](hidden, out, M, H, hidden.stride(0), BLOCK_M=BLOCK_M, BLOCK_H=BLOCK_H)
        ctx.save_for_backward(hidden)
        return out

    @staticmethod
    def backward(ctx, dout):
        (hidden,) = ctx.saved_tensors
        M, H = hidden.shape[0], hidden.shape[1] // 2
        dh = torch.empty(M, 2 * H, dtype=hidden.dtype, device=hidden.device)
        if M and H:
            swiglu_bwd_kernel[_grid(M, H)](hidden, dout.contiguous(), dh, M, H, hidden.stride(0),
                                           BLOCK_M=BLOCK_M, BLOCK_H=BLOCK_H)
        return dh


def swiglu_triton(hidden: torch.Tensor) -> torch.Tensor:
    """The fused activation (module docstring): hidden (..., 2H) -> (..., H)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    return apply_function(SwiGLUTriton, flat).view(*hidden.shape[:-1], hidden.shape[-1] // 2)
