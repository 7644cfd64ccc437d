"""The output pass and its dx: one program per (chunk, expert, P-block), all chunks in parallel.

With a_i = cumsum(dt * A_e) inside the chunk, K_j = dt_j B_j, Q_i = C_i and h_c the chunk's
start state (from :mod:`.state`):

    y_i  = sum_{j<=i} (Q_i . K_j) exp(a_i - a_j) x_j + exp(a_i) Q_i^T h_c + D x_i
    dx_j = sum_{i>=j} (Q_i . K_j) exp(a_i - a_j) dy_i + dt_j exp(a_L - a_j) B_j^T dh_c + D dy_j

where dh_c is the gradient w.r.t. the chunk's end state. A chunk whose dt is zero everywhere
(no token routed to the expert) skips its intra-chunk products. Both kernels contract over all
of N in one tile. With half-precision inputs and ``half_operands``, the fp32 scores and states
are rounded to the input dtype for the tensor cores (as mamba_ssm and fla do).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .geometry import Geometry, chunk_bounds
from .tuning import KernelChoices, stage_kernel

# Tuning candidates, the first being the untuned default. (BLOCK_P=32, num_warps=8) is left out
# of both kernels on purpose: with Triton 3.6 on an H200 it gave wrong outputs or an illegal
# memory access (docs/GPU_NOTES.md); tests/ops/test_triton_scan.py runs every candidate alone.
# The maxnreg=128 candidates fit two blocks of 8 warps on an SM instead of one, at the price of
# a few spills (80 bytes in bwd_dx, 248 in fwd_o at N = P = 64: scan_kernel_resources.py); only
# the card can say whether that trade pays, so the tuner decides.


@stage_kernel([
    triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2),
    triton.Config(dict(BLOCK_P=32), num_warps=4, num_stages=2),
    triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2, maxnreg=128),
])
def fwd_o_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h_ptr, y_ptr, ts_ptr, te_ptr,
    T, NC, E, N, P,
    HAS_D: tl.constexpr, IS_VARLEN: tl.constexpr, LOWP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    g = tl.program_id(0)
    e = tl.program_id(1)
    pb = tl.program_id(2)
    ts, te = chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK, IS_VARLEN)
    if ts < te:
        offs_l = tl.arange(0, CHUNK)
        offs_n = tl.arange(0, BLOCK_N)
        offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        mn = offs_n < N
        mp = offs_p < P
        tok = ts + offs_l
        mt = tok < te
        te_ = tok * E + e
        A_e = tl.load(A_ptr + e).to(tl.float32)
        dtv = tl.load(dt_ptr + te_, mask=mt, other=0.0).to(tl.float32)
        a = tl.cumsum(dtv * A_e, axis=0)
        Qn = tl.load(C_ptr + te_[:, None] * N + offs_n[None, :], mask=mt[:, None] & mn[None, :], other=0.0)
        h = tl.load(
            h_ptr + (tl.cast(g, tl.int64) * E + e) * N * P + offs_n[:, None] * P + offs_p[None, :],
            mask=mn[:, None] & mp[None, :], other=0.0,
        ).to(tl.float32)  # stored in fp32 or bf16 (KernelChoices.state_dtype)
        if LOWP:
            y = tl.dot(Qn, h.to(Qn.dtype))
        else:
            Qn = Qn.to(tl.float32)
            y = tl.dot(Qn, h, input_precision=PREC)
        y = y * tl.exp(a)[:, None]
        routed = dtv != 0.0
        if HAS_D:
            xrow = mt
        else:
            xrow = mt & routed
        xm = tl.load(x_ptr + te_[:, None] * P + offs_p[None, :], mask=xrow[:, None] & mp[None, :], other=0.0)
        if not LOWP:
            xm = xm.to(tl.float32)
        if tl.max(tl.abs(dtv), axis=0) > 0.0:  # routing skip: an idle chunk has no intra term
            Bn = tl.load(B_ptr + te_[:, None] * N + offs_n[None, :], mask=(mt & routed)[:, None] & mn[None, :], other=0.0)
            if not LOWP:
                Bn = Bn.to(tl.float32)
            causal = offs_l[:, None] >= offs_l[None, :]
            decay = tl.exp(tl.where(causal, a[:, None] - a[None, :], float("-inf"))) * dtv[None, :]
            # C B^T on the input dtype (exact products, fp32 accumulation); dt and decay in fp32
            S = tl.dot(Qn, tl.trans(Bn), input_precision=PREC) * decay
            y += tl.dot(S.to(xm.dtype), xm, input_precision=PREC)
        if HAS_D:
            Dv = tl.load(D_ptr + e * P + offs_p, mask=mp, other=0.0).to(tl.float32)
            y += Dv[None, :] * xm.to(tl.float32)
        tl.store(y_ptr + te_[:, None] * P + offs_p[None, :], y.to(y_ptr.dtype.element_ty), mask=mt[:, None] & mp[None, :])


@stage_kernel([
    triton.Config(dict(BLOCK_P=32), num_warps=4, num_stages=2),
    triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2),
    triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2, maxnreg=128),
])
def bwd_dx_kernel(
    dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dh_ptr, dy_ptr, dx_ptr, ts_ptr, te_ptr,
    T, NC, E, N, P,
    HAS_D: tl.constexpr, IS_VARLEN: tl.constexpr, LOWP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    """dx_j = sum_{i>=j} A_ij dy_i + dt_j exp(a_L - a_j) (B_j^T dh_c) + D dy_j."""
    g = tl.program_id(0)
    e = tl.program_id(1)
    pb = tl.program_id(2)
    ts, te = chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK, IS_VARLEN)
    if ts < te:
        offs_l = tl.arange(0, CHUNK)
        offs_n = tl.arange(0, BLOCK_N)
        offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        mn = offs_n < N
        mp = offs_p < P
        tok = ts + offs_l
        mt = tok < te
        te_ = tok * E + e
        ln_mask = mt[:, None] & mn[None, :]
        lp_mask = mt[:, None] & mp[None, :]
        lp_off = te_[:, None] * P + offs_p[None, :]
        A_e = tl.load(A_ptr + e).to(tl.float32)
        dtv = tl.load(dt_ptr + te_, mask=mt, other=0.0).to(tl.float32)
        a = tl.cumsum(dtv * A_e, axis=0)
        a_last = tl.sum(dtv * A_e, axis=0)
        routed = dtv != 0.0
        Bn = tl.load(B_ptr + te_[:, None] * N + offs_n[None, :], mask=(mt & routed)[:, None] & mn[None, :], other=0.0)
        dyn = tl.load(dy_ptr + lp_off, mask=lp_mask, other=0.0)
        dhm = tl.load(dh_ptr + (tl.cast(g, tl.int64) * E + e) * N * P + offs_n[:, None] * P + offs_p[None, :],
                      mask=mn[:, None] & mp[None, :], other=0.0).to(tl.float32)
        if LOWP:
            dx = tl.dot(Bn, dhm.to(Bn.dtype))
        else:
            Bn = Bn.to(tl.float32)
            dyn = dyn.to(tl.float32)
            dx = tl.dot(Bn, dhm, input_precision=PREC)
        dx = dx * (dtv * tl.exp(a_last - a))[:, None]
        if tl.max(tl.abs(dtv), axis=0) > 0.0:  # routing skip: no intra term in an idle chunk
            Qn = tl.load(C_ptr + te_[:, None] * N + offs_n[None, :], mask=ln_mask, other=0.0)
            if not LOWP:
                Qn = Qn.to(tl.float32)
            # A^T[j, i] = (B_j . C_i) dt_j exp(a_i - a_j) for i >= j (rows j, columns i)
            anti = offs_l[:, None] <= offs_l[None, :]
            decayT = tl.exp(tl.where(anti, a[None, :] - a[:, None], float("-inf")))
            AT = tl.dot(Bn, tl.trans(Qn), input_precision=PREC) * decayT * dtv[:, None]
            dx += tl.dot(AT.to(dyn.dtype), dyn, input_precision=PREC)
        if HAS_D:
            Dv = tl.load(D_ptr + e * P + offs_p, mask=mp, other=0.0).to(tl.float32)
            dx += Dv[None, :] * dyn.to(tl.float32)
        tl.store(dx_ptr + lp_off, dx.to(dx_ptr.dtype.element_ty), mask=lp_mask)


def fwd_o(x, dt, A, B, C, D, h, geo: Geometry, choices: KernelChoices):
    """The scan's output y (batch, T, E, P) in x's dtype.

    Args:
        x: (batch, T, E, P). dt: (batch, T, E). A: (E,). B, C: (batch, T, E, N). D: (E, P) or
        None. All contiguous. h: (U, E, N, P) fp32 chunk start states from :func:`.state.fwd_h`.
    """
    E, P, N = x.shape[2], x.shape[3], B.shape[-1]
    y = torch.empty_like(x)
    args = (x, dt, A, B, C, D if D is not None else A, h, y, geo.ts, geo.te, geo.T, geo.NC, E, N, P)
    consts = dict(HAS_D=D is not None, IS_VARLEN=geo.varlen, LOWP=choices.half_operands,
                  CHUNK=geo.L, PREC=choices.prec)
    fwd_o_kernel.launch(geo.per_chunk_grid(E, P), args, consts, choices)
    return y


def bwd_dx(x, dt, A, B, C, D, dh, dy, geo: Geometry, choices: KernelChoices):
    """dx (batch, T, E, P) in x's dtype.

    Args:
        x: (batch, T, E, P), for its shape and dtype. dt, A, B, C, D as in :func:`fwd_o`.
        dh: (U, E, N, P) fp32 from :func:`.state.bwd_dh`. dy: (batch, T, E, P), contiguous.
    """
    E, P, N = x.shape[2], x.shape[3], B.shape[-1]
    dx = torch.empty_like(x)
    args = (dt, A, B, C, D if D is not None else A, dh, dy, dx, geo.ts, geo.te, geo.T, geo.NC, E, N, P)
    consts = dict(HAS_D=D is not None, IS_VARLEN=geo.varlen, LOWP=choices.half_operands,
                  CHUNK=geo.L, PREC=choices.prec)
    bwd_dx_kernel.launch(geo.per_chunk_grid(E, P), args, consts, choices)
    return dx
