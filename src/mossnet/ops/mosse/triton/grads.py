"""The gradients of the projections and the decay: dC, dB, ddt, dA and dD.

One program per (chunk, expert), looping over P blocks. With dP_ij = dy_i . x_j, the decay
matrix G_ij = exp(a_i - a_j) (i >= j), dS = dP * G and the chunk states h, dh of :mod:`.state`:

    dQ_i = exp(a_i) (dy h^T)_i + sum_j dS_ij K_j                  (dC = dQ)
    dK_j = sum_i dS_ij Q_i + exp(a_L - a_j) (x dh^T)_j            (dB = dt dK)
    da_i = Q_i . dQ_i - K_i . dK_i,  plus sum(h_{c+1} * dh_{c+1}) at the chunk's last position

and d(dt_t A) = sum_{i >= t in the chunk} da_i (a reverse cumulative sum), which gives ddt and
the per-chunk partial of dA. The partials of dA and dD are summed in PyTorch afterwards:
deterministic, no atomics.

Precision: dy x^T multiplies the inputs in their own dtype when ``half_operands`` (exact
products, fp32 accumulation); the products with the fp32 states stay fp32/tf32 even for half
inputs, because dA sums da over every token and rounding the states to bf16 here cost it about
1e-2 relative RMS (measured on an H200).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .geometry import Geometry, chunk_bounds
from .tuning import KernelChoices, stage_kernel

# Tuning candidates, the first being the untuned default; all contract over the whole of N.


@stage_kernel([
    triton.Config(dict(BLOCK_P=64), num_warps=8, num_stages=2),
    triton.Config(dict(BLOCK_P=32), num_warps=8, num_stages=2),
    triton.Config(dict(BLOCK_P=16), num_warps=8, num_stages=2),
])
def bwd_dqk_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h_ptr, dh_ptr, dy_ptr,
    ddt_ptr, dB_ptr, dC_ptr, dA_part_ptr, dD_part_ptr, ts_ptr, te_ptr,
    T, NC, E, N, P,
    HAS_D: tl.constexpr, IS_VARLEN: tl.constexpr, LOWP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    """dC, dB, ddt and the partials of dA, dD for one (chunk, expert); loops over P blocks."""
    g = tl.program_id(0)
    e = tl.program_id(1)
    ts, te = chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK, IS_VARLEN)
    if ts < te:
        offs_l = tl.arange(0, CHUNK)
        offs_n = tl.arange(0, BLOCK_N)
        mn = offs_n < N
        tok = ts + offs_l
        mt = tok < te
        te_ = tok * E + e
        ln_mask = mt[:, None] & mn[None, :]
        dP = tl.zeros([CHUNK, CHUNK], dtype=tl.float32)  # dP[i, j] = dy_i . x_j
        dQ = tl.zeros([CHUNK, BLOCK_N], dtype=tl.float32)  # dy h^T
        dKs = tl.zeros([CHUNK, BLOCK_N], dtype=tl.float32)  # x dh^T
        hdh = tl.zeros([BLOCK_N], dtype=tl.float32)
        hbase = (tl.cast(g, tl.int64) * E + e) * N * P
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mp = offs_p < P
            lp_mask = mt[:, None] & mp[None, :]
            lp_off = te_[:, None] * P + offs_p[None, :]
            np_off = offs_n[:, None] * P + offs_p[None, :]
            xn = tl.load(x_ptr + lp_off, mask=lp_mask, other=0.0)
            dyn = tl.load(dy_ptr + lp_off, mask=lp_mask, other=0.0)
            # the states are stored in fp32 or bf16 (KernelChoices.state_dtype); fp32 from here on
            hm = tl.load(h_ptr + hbase + np_off, mask=mn[:, None] & mp[None, :], other=0.0).to(tl.float32)
            dhm = tl.load(dh_ptr + hbase + np_off, mask=mn[:, None] & mp[None, :], other=0.0).to(tl.float32)
            # dy x^T on the input dtype (exact products); the products with the fp32 states stay
            # fp32/tf32 even for half inputs: dA sums da over every token and rounding the states
            # to bf16 here cost it ~1e-2 relative RMS (measured on the H200).
            if LOWP:
                dP += tl.dot(dyn, tl.trans(xn))
            xm = xn.to(tl.float32)
            dym = dyn.to(tl.float32)
            if not LOWP:
                dP += tl.dot(dym, tl.trans(xm), input_precision=PREC)
            dQ += tl.dot(dym, tl.trans(hm), input_precision=PREC)
            dKs += tl.dot(xm, tl.trans(dhm), input_precision=PREC)
            hdh += tl.sum(hm * dhm, axis=1)
            if HAS_D:
                dDp = tl.sum(dym * xm, axis=0)
                tl.store(dD_part_ptr + (tl.cast(g, tl.int64) * E + e) * P + offs_p, dDp, mask=mp)
        A_e = tl.load(A_ptr + e).to(tl.float32)
        dtv = tl.load(dt_ptr + te_, mask=mt, other=0.0).to(tl.float32)
        a = tl.cumsum(dtv * A_e, axis=0)
        a_last = tl.sum(dtv * A_e, axis=0)
        w_end = tl.exp(a_last - a)
        Qn = tl.load(C_ptr + te_[:, None] * N + offs_n[None, :], mask=ln_mask, other=0.0)
        Bn = tl.load(B_ptr + te_[:, None] * N + offs_n[None, :], mask=ln_mask, other=0.0)
        causal = offs_l[:, None] >= offs_l[None, :]
        decay = tl.exp(tl.where(causal, a[:, None] - a[None, :], float("-inf")))
        dS = dP * decay  # gradient of the (C_i . K_j) scores, i >= j
        Q = Qn.to(tl.float32)
        Bf = Bn.to(tl.float32)
        K = Bf * dtv[:, None]
        # dQ_i = exp(a_i) (dy h^T)_i + sum_j dS_ij K_j ; dK_j = sum_i dS_ij C_i + w_end_j (x dh^T)_j
        dQ = dQ * tl.exp(a)[:, None] + tl.dot(dS, K, input_precision=PREC)
        dKs = dKs * w_end[:, None]
        dK = tl.dot(tl.trans(dS), Q, input_precision=PREC) + dKs
        da = tl.sum(Q * dQ, axis=1) - tl.sum(K * dK, axis=1)
        last = tl.exp(a_last) * tl.sum(hdh, axis=0) + tl.sum(tl.sum(K * dKs, axis=1), axis=0)
        grev = tl.sum(da, axis=0) - tl.cumsum(da, axis=0) + da + last  # sum_{i >= t} da_i + last
        ddt = tl.sum(Bf * dK, axis=1) + grev * A_e
        tl.store(dC_ptr + te_[:, None] * N + offs_n[None, :], dQ.to(dC_ptr.dtype.element_ty), mask=ln_mask)
        tl.store(dB_ptr + te_[:, None] * N + offs_n[None, :], (dK * dtv[:, None]).to(dB_ptr.dtype.element_ty), mask=ln_mask)
        tl.store(ddt_ptr + te_, ddt, mask=mt)
        tl.store(dA_part_ptr + tl.cast(g, tl.int64) * E + e, tl.sum(grev * dtv, axis=0))


def bwd_dqk(x, dt, A, B, C, D, h, dh, dy, geo: Geometry, choices: KernelChoices):
    """Gradients w.r.t. dt, A, B, C and D.

    Args:
        x, dy: (batch, T, E, P). dt: (batch, T, E). A: (E,). B, C: (batch, T, E, N).
        D: (E, P) or None. All contiguous. h, dh: (U, E, N, P) fp32 chunk states and their
        gradients (:mod:`.state`).
    Returns:
        ``(ddt, dA, dB, dC, dD)``, each in its input's dtype; dD is None when D is.
    """
    E, P, N = x.shape[2], x.shape[3], B.shape[-1]
    dB = torch.empty_like(B)
    dC = torch.empty_like(C)
    ddt = torch.empty(dt.shape, dtype=torch.float32, device=x.device)
    # Surplus programs of a packed batch write nothing: their partials must read as zeros.
    alloc = torch.zeros if geo.varlen else torch.empty
    dA_part = alloc(geo.U, E, dtype=torch.float32, device=x.device)
    dD_part = alloc(geo.U, E, P, dtype=torch.float32, device=x.device) if D is not None else dA_part
    args = (x, dt, A, B, C, h, dh, dy, ddt, dB, dC, dA_part, dD_part,
            geo.ts, geo.te, geo.T, geo.NC, E, N, P)
    consts = dict(HAS_D=D is not None, IS_VARLEN=geo.varlen, LOWP=choices.half_operands,
                  CHUNK=geo.L, PREC=choices.prec)
    bwd_dqk_kernel.launch(geo.per_chunk_grid(E), args, consts, choices)
    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    return ddt.to(dt.dtype), dA, dB, dC, dD
