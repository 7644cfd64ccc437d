"""The MoSSE read-out in one Triton kernel each way: what the layer does between the scan and the
router gate, per dispatched row of width P.

    y    = y_folded / scale + skip_D * x                  (undo the decay fold; the skip term)
    out  = RMSNorm_P(y * SiLU(z + z_bias)) * norm_weight  (the gated per-expert norm)

In PyTorch this is about a dozen elementwise and reduction launches forward and twice that
backward, each reading and writing (M, P) tensors; here one program reads each input once and
writes the output (forward) or every gradient (backward). The backward recomputes y, the gate and
the norm's scale from the inputs instead of saving them.

Reference: :func:`mossnet.ops.mosse.read_out.read_out_reference` (tests compare forward and every
gradient against it). Contract of the tensors: (M, P) with unit column stride (rows may be
strided, as the layer's gathered parameter rows are); scale (M,).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...function_call import apply_function
from ...launch_grid import cdiv, next_power_of_2

MAX_WIDTH = 1024  # one row per register tile; wider rows take the reference path


@triton.jit
def _row_terms(y_ptr, s_ptr, x_ptr, d_ptr, z_ptr, zb_ptr, w_ptr, M, P, sy, sx, sd, sz, szb, sw,
               HAS_ZB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's (BLOCK_M, BLOCK_P) tile: its offsets and masks, the inputs in fp32, the
    unfolded y and the gate's input z (+ z_bias)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_P)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols[None, :] < P)
    r = rows[:, None]
    c = cols[None, :]
    yf = tl.load(y_ptr + r * sy + c, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)
    x = tl.load(x_ptr + r * sx + c, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(d_ptr + r * sd + c, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + r * sz + c, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZB:
        z += tl.load(zb_ptr + r * szb + c, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + r * sw + c, mask=mask, other=0.0).to(tl.float32)
    y = yf / s[:, None] + d * x
    return r * P + c, rows, row_ok, mask, yf, s, x, d, z, w, y


@triton.jit
def read_out_fwd_kernel(y_ptr, s_ptr, x_ptr, d_ptr, z_ptr, zb_ptr, w_ptr, out_ptr, M, P, eps,
                        sy, sx, sd, sz, szb, sw,
                        HAS_ZB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    out_off, _, _, mask, _, _, _, _, z, w, y = _row_terms(
        y_ptr, s_ptr, x_ptr, d_ptr, z_ptr, zb_ptr, w_ptr, M, P, sy, sx, sd, sz, szb, sw, HAS_ZB, BLOCK_M, BLOCK_P)
    a = y * (z * tl.sigmoid(z))
    rstd = 1.0 / tl.sqrt(tl.sum(a * a, axis=1) / P + eps)
    tl.store(out_ptr + out_off, a * rstd[:, None] * w, mask=mask)


@triton.jit
def read_out_bwd_kernel(y_ptr, s_ptr, x_ptr, d_ptr, z_ptr, zb_ptr, w_ptr, dout_ptr,
                        dy_ptr, ds_ptr, dx_ptr, dd_ptr, dz_ptr, dw_ptr, M, P, eps,
                        sy, sx, sd, sz, szb, sw,
                        HAS_ZB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    out_off, rows, row_ok, mask, yf, s, x, d, z, w, y = _row_terms(
        y_ptr, s_ptr, x_ptr, d_ptr, z_ptr, zb_ptr, w_ptr, M, P, sy, sx, sd, sz, szb, sw, HAS_ZB, BLOCK_M, BLOCK_P)
    dout = tl.load(dout_ptr + out_off, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    gate = z * sig
    a = y * gate
    rstd = 1.0 / tl.sqrt(tl.sum(a * a, axis=1) / P + eps)
    a_hat = a * rstd[:, None]
    dn = dout * w  # d loss / d a_hat
    da = rstd[:, None] * (dn - a_hat * (tl.sum(dn * a_hat, axis=1) / P)[:, None])
    dy = da * gate  # d loss / d y (the unfolded one)
    dzz = da * y * sig * (1.0 + z * (1.0 - sig))
    tl.store(dw_ptr + out_off, dout * a_hat, mask=mask)
    tl.store(dz_ptr + out_off, dzz, mask=mask)
    tl.store(dy_ptr + out_off, dy / s[:, None], mask=mask)
    tl.store(ds_ptr + rows, -tl.sum(dy * yf, axis=1) / (s * s), mask=row_ok)
    tl.store(dd_ptr + out_off, dy * x, mask=mask)
    tl.store(dx_ptr + out_off, dy * d, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit column stride (a copy only if it has none)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _grid(M: int, P: int, tile: int) -> tuple[tuple[int], int, int]:
    """Rows per program so that one (rows, P) fp32 tile holds about ``tile`` elements: the
    backward keeps about twelve such tiles live, the forward about seven, and both should stay in
    registers at the default four warps (128 threads)."""
    block_p = next_power_of_2(P)
    block_m = max(1, min(64, tile // block_p))
    return (cdiv(M, block_m),), block_m, block_p


class ReadOutTriton(torch.autograd.Function):
    """out = read_out(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps); fp32 out."""

    @staticmethod
    def forward(ctx, y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps):
        y_folded, x, skip_D, z, norm_weight = (_rows(t) for t in (y_folded, x, skip_D, z, norm_weight))
        z_bias = _rows(z_bias) if z_bias is not None else None
        scale = scale.contiguous()
        M, P = x.shape
        out = torch.empty(M, P, dtype=torch.float32, device=x.device)
        grid, block_m, block_p = _grid(M, P, tile=2048)
        zb = z_bias if z_bias is not None else z
        read_out_fwd_kernel[grid](y_folded, scale, x, skip_D, z, zb, norm_weight, out, M, P, eps,
                                  y_folded.stride(0), x.stride(0), skip_D.stride(0), z.stride(0), zb.stride(0),
                                  norm_weight.stride(0), HAS_ZB=z_bias is not None, BLOCK_M=block_m, BLOCK_P=block_p)
        ctx.save_for_backward(y_folded, scale, x, skip_D, z, z_bias, norm_weight)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, dout):
        y_folded, scale, x, skip_D, z, z_bias, norm_weight = ctx.saved_tensors
        dout = dout.contiguous()
        M, P = x.shape
        f32 = dict(dtype=torch.float32, device=x.device)
        dy, dx, dd, dz, dw = (torch.empty(M, P, **f32) for _ in range(5))
        ds = torch.empty(M, **f32)
        grid, block_m, block_p = _grid(M, P, tile=1024)
        zb = z_bias if z_bias is not None else z
        read_out_bwd_kernel[grid](y_folded, scale, x, skip_D, z, zb, norm_weight, dout, dy, ds, dx, dd, dz, dw,
                                  M, P, ctx.eps, y_folded.stride(0), x.stride(0), skip_D.stride(0), z.stride(0),
                                  zb.stride(0), norm_weight.stride(0), HAS_ZB=z_bias is not None,
                                  BLOCK_M=block_m, BLOCK_P=block_p)
        dzb = dz.to(z_bias.dtype) if z_bias is not None and ctx.needs_input_grad[5] else None
        return (dy.to(y_folded.dtype), ds.to(scale.dtype), dx.to(x.dtype), dd.to(skip_D.dtype), dz.to(z.dtype), dzb,
                dw.to(norm_weight.dtype), None)


def read_out_triton(y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps: float) -> torch.Tensor:
    """The fused read-out (module docstring); inputs as :func:`read_out_reference` takes them."""
    return apply_function(ReadOutTriton, y_folded, scale, x, skip_D, z, z_bias, norm_weight, eps)
