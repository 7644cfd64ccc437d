"""Triton fast path of the MoSSE scan (spec section 5): forward and backward kernels.

The math is the chunkwise (SSD) form of :mod:`.chunked`. Per expert e, chunk c of L tokens,
a_i = cumsum(dt * A_e) inside the chunk, K_j = dt_j B_j (key), Q_i = C_i (query), h_c the
(N, P) state at the start of chunk c:

    y_i     = sum_{j<=i} (Q_i . K_j) exp(a_i - a_j) x_j + exp(a_i) Q_i^T h_c + D x_i
    h_{c+1} = exp(a_L) h_c + sum_j exp(a_L - a_j) K_j x_j^T

Kernels (all fp32 state and accumulation; inputs fp32, fp16 or bf16):

* ``_fwd_h_kernel``   one program per (sequence, expert, P-block): walks the sequence's chunks
  in order with the state in registers and stores every chunk's start state h_c (fp32) and,
  if asked, the final state. Token rows with dt == 0 (not routed to the expert) are not even
  loaded: their loads are predicated off, so routing sparsity saves memory traffic here.
* ``_fwd_o_kernel``   one program per (chunk, expert, P-block), all in parallel: the output.
  A chunk whose dt is zero everywhere skips its intra-chunk products (routing skip).
* ``_bwd_dh_kernel``  the reverse walk: dh_c, the gradient w.r.t. each chunk's end state, and
  the gradient of the initial state.
* ``_bwd_dx_kernel``  one program per (chunk, expert, P-block): dx.
* ``_bwd_dqk_kernel`` one program per (chunk, expert), looping over P blocks: dC, dB, ddt and
  per-chunk partials of dA and dD (summed in PyTorch afterwards: deterministic, no atomics).

The backward recomputes h (one extra cheap pass) rather than keeping it from the forward,
as flash-linear-attention does: the fp32 chunk states would cost 2x the activation memory of x.

Varlen (``cu_seqlens``): chunks never straddle sequence boundaries. Sequence s owns the
chunks ``cu_chunks[s]:cu_chunks[s+1]``, each starting at ``cu_seqlens[s] + k * L``. The chunk
table is built with a few tensor ops on the device (no host synchronisation); the grid of the
parallel kernels is sized by the upper bound ``ceil(T / L) + n_seqs`` and surplus programs
exit at once. The batched layout is run as the same packed problem with the sequence table
computed inside the kernels (no table at all).

Gradient of the decay (with dQ, dK the full gradients w.r.t. Q and K in one chunk):
    da_i = Q_i . dQ_i - K_i . dK_i,   plus  sum(h_{c+1} * dh_{c+1}) at the chunk's last position,
and d(dt_t A) = sum_{i >= t in chunk} da_i (a reverse cumulative sum).

Precision: fp32 inputs use IEEE fp32 dot products (``input_precision="ieee"``; Triton would
use tf32 by default). For fp16/bf16 inputs, products of two inputs (C B^T, dy x^T) run on the
input dtype (exact products, fp32 accumulation); in the output (``_fwd_o``) and dx passes the
fp32 intermediates (scores, states) are rounded to the input dtype for the tensor cores, as
mamba_ssm and fla do; in the two state passes and the dC/dB/ddt pass they stay fp32 and multiply
in tf32 (rounding them to bf16 there put dA at 5e-3..1e-2 relative RMS on an H200).
``MOSSNET_TRITON_LOWP=0`` runs every product in tf32. States and all accumulations are fp32.

Autotuning is bounded: at most four configurations per kernel, tuned once per
(kernel, N, P, dtype, flags) key and cached for the process; ``MOSSNET_TRITON_AUTOTUNE=0``
turns it off (a fixed default config, which is what the tests use), and it is off under the
Triton interpreter.
"""

from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

from .interface import register_fast_path

DEFAULT_CHUNK = 64
MAX_STATE_DIM = 256  # N above this would not fit one register tile; such calls fall back


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _patch_interpreter_for_numpy2() -> None:
    """Triton 3.6's CPU interpreter turns scalars (held as 1-element arrays) into Python ints
    with ``int(array)``, which NumPy >= 2.4 refuses for arrays of one dimension; a dynamic
    ``range(c0, c1)`` then fails. Only touches the interpreter, only when it is in use."""
    try:
        from triton.runtime import interpreter as _interp
    except ImportError:  # pragma: no cover
        return
    original = getattr(_interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_mossnet_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._mossnet_patched = True
    _interp._patch_lang_tensor = patched


if _interpreting():
    _patch_interpreter_for_numpy2()

# Sizes that vary from call to call (T, chunks per sequence, experts) are not specialised on
# their divisibility (as flash-linear-attention does with do_not_specialize=['T']): no new
# compile per T % 16 class. MOSSNET_TRITON_SPECIALIZE=1 restores Triton's default; on an H200 it
# gave the same results (bench_scan.py --specialize-probe, docs/GPU_NOTES.md).
if os.environ.get("MOSSNET_TRITON_SPECIALIZE", "0") == "1":
    _kernel = triton.jit
else:
    _kernel = triton.jit(do_not_specialize=["T", "NC", "E"])


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _seq_bounds(s, cu_ptr, cuch_ptr, T, NC, IS_VARLEN: tl.constexpr):
    """Token range [t0, t1) and global chunk range [c0, c1) of sequence s."""
    if IS_VARLEN:
        t0 = tl.load(cu_ptr + s).to(tl.int64)
        t1 = tl.load(cu_ptr + s + 1).to(tl.int64)
        c0 = tl.load(cuch_ptr + s)
        c1 = tl.load(cuch_ptr + s + 1)
    else:
        t0 = tl.cast(s, tl.int64) * T
        t1 = t0 + T
        c0 = s * NC
        c1 = c0 + NC
    return t0, t1, c0, c1


@triton.jit
def _chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Token range [ts, te) of global chunk g (empty for surplus programs)."""
    if IS_VARLEN:
        ts = tl.load(ts_ptr + g).to(tl.int64)
        te = tl.load(te_ptr + g).to(tl.int64)
    else:
        b = g // NC
        ts = tl.cast(b, tl.int64) * T + tl.cast(g % NC, tl.int64) * CHUNK
        te = tl.minimum(ts + CHUNK, (tl.cast(b, tl.int64) + 1) * T)
    return ts, te


@_kernel
def _fwd_h_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, h0_ptr, h_ptr, hT_ptr, cu_ptr, cuch_ptr,
    T, NC, E, N, P,
    HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr, IS_VARLEN: tl.constexpr, ROW_SKIP: tl.constexpr,
    LOWP: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    s = tl.program_id(0)
    e = tl.program_id(1)
    n_pb = tl.cdiv(P, BLOCK_P)
    nb = tl.program_id(2) // n_pb
    pb = tl.program_id(2) % n_pb
    t0, t1, c0, c1 = _seq_bounds(s, cu_ptr, cuch_ptr, T, NC, IS_VARLEN)
    offs_l = tl.arange(0, CHUNK)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    mn = offs_n < N
    mp = offs_p < P
    mnp = mn[:, None] & mp[None, :]
    np_off = offs_n[:, None] * P + offs_p[None, :]
    A_e = tl.load(A_ptr + e).to(tl.float32)
    if HAS_INIT:
        base0 = (tl.cast(s, tl.int64) * E + e) * N * P
        h = tl.load(h0_ptr + base0 + np_off, mask=mnp, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    for g in range(c0, c1):
        tl.store(h_ptr + (tl.cast(g, tl.int64) * E + e) * N * P + np_off, h, mask=mnp)
        tok = t0 + tl.cast(g - c0, tl.int64) * CHUNK + offs_l
        mt = tok < t1
        te_ = tok * E + e
        dtv = tl.load(dt_ptr + te_, mask=mt, other=0.0).to(tl.float32)
        a = tl.cumsum(dtv * A_e, axis=0)
        a_last = tl.sum(dtv * A_e, axis=0)
        w = tl.exp(a_last - a) * dtv
        if ROW_SKIP:
            row = mt & (dtv != 0.0)  # unrouted tokens are never loaded
        else:
            row = mt
        Bm = tl.load(B_ptr + te_[:, None] * N + offs_n[None, :], mask=row[:, None] & mn[None, :], other=0.0)
        xm = tl.load(x_ptr + te_[:, None] * P + offs_p[None, :], mask=row[:, None] & mp[None, :], other=0.0)
        Kw = Bm.to(tl.float32) * w[:, None]
        if LOWP:  # half-precision operands, fp32 accumulation (as mamba_ssm's chunk_state)
            upd = tl.dot(tl.trans(Kw.to(xm.dtype)), xm)
        else:
            upd = tl.dot(tl.trans(Kw), xm.to(tl.float32), input_precision=PREC)
        h = h * tl.exp(a_last) + upd
    if STORE_FINAL:
        baseT = (tl.cast(s, tl.int64) * E + e) * N * P
        tl.store(hT_ptr + baseT + np_off, h, mask=mnp)


@_kernel
def _fwd_o_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h_ptr, y_ptr, ts_ptr, te_ptr,
    T, NC, E, N, P,
    HAS_D: tl.constexpr, IS_VARLEN: tl.constexpr, LOWP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    g = tl.program_id(0)
    e = tl.program_id(1)
    pb = tl.program_id(2)
    ts, te = _chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK, IS_VARLEN)
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
        )
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


@_kernel
def _bwd_dh_kernel(
    dy_ptr, dt_ptr, A_ptr, C_ptr, dhT_ptr, dh_ptr, dh0_ptr, cu_ptr, cuch_ptr,
    T, NC, E, N, P,
    HAS_DFINAL: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
    LOWP: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    s = tl.program_id(0)
    e = tl.program_id(1)
    n_pb = tl.cdiv(P, BLOCK_P)
    nb = tl.program_id(2) // n_pb
    pb = tl.program_id(2) % n_pb
    t0, t1, c0, c1 = _seq_bounds(s, cu_ptr, cuch_ptr, T, NC, IS_VARLEN)
    offs_l = tl.arange(0, CHUNK)
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    mn = offs_n < N
    mp = offs_p < P
    mnp = mn[:, None] & mp[None, :]
    np_off = offs_n[:, None] * P + offs_p[None, :]
    A_e = tl.load(A_ptr + e).to(tl.float32)
    if HAS_DFINAL:
        baseT = (tl.cast(s, tl.int64) * E + e) * N * P
        dh = tl.load(dhT_ptr + baseT + np_off, mask=mnp, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    for k in range(0, c1 - c0):
        g = c1 - 1 - k
        tl.store(dh_ptr + (tl.cast(g, tl.int64) * E + e) * N * P + np_off, dh, mask=mnp)
        tok = t0 + tl.cast(g - c0, tl.int64) * CHUNK + offs_l
        mt = tok < t1
        te_ = tok * E + e
        dtv = tl.load(dt_ptr + te_, mask=mt, other=0.0).to(tl.float32)
        a = tl.cumsum(dtv * A_e, axis=0)
        a_last = tl.sum(dtv * A_e, axis=0)
        Q = tl.load(C_ptr + te_[:, None] * N + offs_n[None, :], mask=mt[:, None] & mn[None, :], other=0.0)
        dy = tl.load(dy_ptr + te_[:, None] * P + offs_p[None, :], mask=mt[:, None] & mp[None, :], other=0.0)
        Qd = Q.to(tl.float32) * tl.exp(a)[:, None]
        if LOWP:
            upd = tl.dot(tl.trans(Qd.to(dy.dtype)), dy)
        else:
            upd = tl.dot(tl.trans(Qd), dy.to(tl.float32), input_precision=PREC)
        dh = dh * tl.exp(a_last) + upd
    if STORE_DH0:
        base0 = (tl.cast(s, tl.int64) * E + e) * N * P
        tl.store(dh0_ptr + base0 + np_off, dh, mask=mnp)


@_kernel
def _bwd_dx_kernel(
    dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dh_ptr, dy_ptr, dx_ptr, ts_ptr, te_ptr,
    T, NC, E, N, P,
    HAS_D: tl.constexpr, IS_VARLEN: tl.constexpr, LOWP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    """dx_j = sum_{i>=j} A_ij dy_i + dt_j exp(a_L - a_j) (B_j^T dh_c) + D dy_j."""
    g = tl.program_id(0)
    e = tl.program_id(1)
    pb = tl.program_id(2)
    ts, te = _chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK, IS_VARLEN)
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
                      mask=mn[:, None] & mp[None, :], other=0.0)
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


@_kernel
def _bwd_dqk_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h_ptr, dh_ptr, dy_ptr,
    ddt_ptr, dB_ptr, dC_ptr, dA_part_ptr, dD_part_ptr, ts_ptr, te_ptr,
    T, NC, E, N, P,
    HAS_D: tl.constexpr, IS_VARLEN: tl.constexpr, LOWP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr,
):
    """dC, dB, ddt and the partials of dA, dD for one (chunk, expert); loops over P blocks."""
    g = tl.program_id(0)
    e = tl.program_id(1)
    ts, te = _chunk_bounds(g, ts_ptr, te_ptr, T, NC, CHUNK, IS_VARLEN)
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
            hm = tl.load(h_ptr + hbase + np_off, mask=mn[:, None] & mp[None, :], other=0.0)
            dhm = tl.load(dh_ptr + hbase + np_off, mask=mn[:, None] & mp[None, :], other=0.0)
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


# ----------------------------------------------------------------------------------------------
# Launch helpers: bounded autotuning
# ----------------------------------------------------------------------------------------------

# At most four configs per kernel; the first is the untuned default. BLOCK_N is tiled only in
# the two sequential kernels (more programs in flight); the parallel ones contract over all N.
_CONFIGS = {
    "fwd_h": [
        dict(BLOCK_N=16, BLOCK_P=16, ROW_SKIP=True, num_warps=1, num_stages=3),
        dict(BLOCK_N=16, BLOCK_P=16, ROW_SKIP=False, num_warps=1, num_stages=3),
        dict(BLOCK_N=32, BLOCK_P=32, ROW_SKIP=False, num_warps=4, num_stages=2),
        dict(BLOCK_N=16, BLOCK_P=32, ROW_SKIP=True, num_warps=2, num_stages=2),
    ],
    # (BLOCK_P=32, num_warps=8) is left out of fwd_o / bwd_dx on purpose: with Triton 3.6 on an
    # H200 it gave wrong outputs or an illegal memory access (docs/GPU_NOTES.md).
    "fwd_o": [
        dict(BLOCK_P=64, num_warps=8, num_stages=2),
        dict(BLOCK_P=32, num_warps=4, num_stages=2),
    ],
    "bwd_dh": [
        dict(BLOCK_N=16, BLOCK_P=16, num_warps=1, num_stages=3),
        dict(BLOCK_N=32, BLOCK_P=32, num_warps=4, num_stages=2),
        dict(BLOCK_N=16, BLOCK_P=32, num_warps=2, num_stages=2),
    ],
    "bwd_dx": [
        dict(BLOCK_P=32, num_warps=4, num_stages=2),
        dict(BLOCK_P=64, num_warps=8, num_stages=2),
    ],
    "bwd_dqk": [
        dict(BLOCK_P=64, num_warps=8, num_stages=2),
        dict(BLOCK_P=32, num_warps=8, num_stages=2),
        dict(BLOCK_P=16, num_warps=8, num_stages=2),
    ],
}
_TUNED: dict[tuple, dict] = {}
_CANDS: dict[tuple, list] = {}
TUNE_LOG: dict[tuple, list] = {}  # (kernel, key) -> [(config, median ms)], read by benchmarks


def _autotune_enabled() -> bool:
    return not _interpreting() and os.environ.get("MOSSNET_TRITON_AUTOTUNE", "1") != "0"


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _launch(name, kernel, grid_fn, args, consts, N, P, key):
    """Run ``kernel`` with the best of its (at most four) configs for ``key`` (tuned once)."""
    cands = _CANDS.get((name, N, P))
    if cands is None:
        cands = []
        for cfg in _CONFIGS[name]:
            cfg = dict(cfg)
            cfg["BLOCK_P"] = min(cfg["BLOCK_P"], _pow2_at_least_16(P))
            if "BLOCK_N" in cfg:
                cfg["BLOCK_N"] = min(cfg["BLOCK_N"], _pow2_at_least_16(N))
            else:
                cfg["BLOCK_N"] = _pow2_at_least_16(N)
            if cfg not in cands:
                cands.append(cfg)
        _CANDS[(name, N, P)] = cands

    def go(cfg):
        kernel[grid_fn(cfg)](*args, **consts, **cfg)

    if len(cands) == 1 or not _autotune_enabled():
        go(cands[0])
        return
    full_key = (name, *key)
    cfg = _TUNED.get(full_key)
    if cfg is None:
        from triton.testing import do_bench

        times = []
        for c in cands:
            try:
                times.append(do_bench(lambda c=c: go(c), warmup=5, rep=20, return_mode="median"))
            except (triton.runtime.errors.OutOfResources, triton.compiler.errors.CompilationError):
                times.append(float("inf"))  # a config that does not fit this GPU is just not chosen
        cfg = cands[min(range(len(cands)), key=times.__getitem__)]
        _TUNED[full_key] = cfg
        TUNE_LOG[full_key] = list(zip(cands, times))
    go(cfg)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


_DUMMY: dict = {}


def _dummy_int(device):
    """A placeholder pointer for tables the batched layout does not read (cached per device)."""
    key = str(device)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _DUMMY[key]


class _Geometry:
    """How the (batch, T) or packed (1, total) token axis is cut into chunks."""

    def __init__(self, batch, T, cu_seqlens, L, device):
        self.L = L
        self.T = T
        self.total = batch * T
        if cu_seqlens is None:
            self.varlen = False
            self.n_seqs = batch
            self.NC = triton.cdiv(T, L)
            self.U = batch * self.NC
            dummy = _dummy_int(device)
            self.cu = self.cu_ch = self.ts = self.te = dummy
        else:
            self.varlen = True
            self.n_seqs = cu_seqlens.numel() - 1
            self.NC = 0
            cu = cu_seqlens.to(device=device, dtype=torch.int64)
            nch = (cu[1:] - cu[:-1] + L - 1) // L
            cu_ch = torch.nn.functional.pad(nch.cumsum(0), (1, 0))
            self.U = triton.cdiv(self.total, L) + self.n_seqs  # upper bound: no host sync
            gid = torch.arange(self.U, device=device)
            seq = torch.searchsorted(cu_ch[1:], gid, right=True).clamp_(max=self.n_seqs - 1)
            ts = cu[seq] + (gid - cu_ch[seq]) * L
            te = torch.minimum(ts + L, cu[seq + 1])  # te <= ts for surplus programs
            self.cu = cu.to(torch.int32)
            self.cu_ch = cu_ch.to(torch.int32)
            self.ts = ts.to(torch.int32)
            self.te = te.to(torch.int32)


def _seq_grid(geo, E, N, P):
    return lambda c: (geo.n_seqs, E, triton.cdiv(N, c["BLOCK_N"]) * triton.cdiv(P, c["BLOCK_P"]))


def _prec(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _lowp(dtype) -> bool:
    """Half-precision dot operands (fp32 accumulation) for fp16/bf16 inputs, as mamba_ssm and
    fla do; MOSSNET_TRITON_LOWP=0 upcasts every operand to fp32 and multiplies in tf32 instead.
    The interpreter multiplies bf16 tiles as raw integers, so it always upcasts bf16."""
    if dtype not in (torch.float16, torch.bfloat16) or os.environ.get("MOSSNET_TRITON_LOWP", "1") == "0":
        return False
    return dtype == torch.float16 or not _interpreting()


def _run_fwd_h(x, dt, A, B, h0, geo, E, N, P, store_final):
    dev = x.device
    h = torch.empty(geo.U, E, N, P, dtype=torch.float32, device=dev)
    hT = torch.empty(geo.n_seqs, E, N, P, dtype=torch.float32, device=dev) if store_final else h
    args = (x, dt, A, B, h0 if h0 is not None else h, h, hT, geo.cu, geo.cu_ch, geo.T, geo.NC, E, N, P)
    # The sequential state passes multiply in fp32/tf32 even for half inputs: rounding the scaled
    # B (or C) operand to bf16 there cost the final state, dh0 and dA ~1e-3 relative RMS each.
    consts = dict(HAS_INIT=h0 is not None, STORE_FINAL=store_final, IS_VARLEN=geo.varlen,
                  LOWP=False, CHUNK=geo.L, PREC=_prec(x.dtype))
    _launch("fwd_h", _fwd_h_kernel, _seq_grid(geo, E, N, P), args, consts, N, P, (N, P, x.dtype, geo.L))
    return h, (hT if store_final else None)


class _MosseScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, cu_seqlens, output_final_state, chunk_size):
        batch, T, E, P = x.shape
        N = B.shape[-1]
        x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
        A = A.contiguous()
        Dc = D.contiguous() if D is not None else None
        h0 = initial_state.contiguous() if initial_state is not None else None
        geo = _Geometry(batch, T, cu_seqlens, chunk_size, x.device)
        h, hT = _run_fwd_h(x, dt, A, B, h0, geo, E, N, P, output_final_state)
        y = torch.empty_like(x)
        args = (x, dt, A, B, C, Dc if Dc is not None else A, h, y, geo.ts, geo.te, geo.T, geo.NC, E, N, P)
        consts = dict(HAS_D=Dc is not None, IS_VARLEN=geo.varlen, LOWP=_lowp(x.dtype), CHUNK=geo.L, PREC=_prec(x.dtype))
        _launch("fwd_o", _fwd_o_kernel, lambda c: (geo.U, E, triton.cdiv(P, c["BLOCK_P"])), args, consts, N, P,
                (N, P, x.dtype, geo.L))
        del h
        ctx.save_for_backward(x, dt, A, B, C, Dc, h0)
        ctx.geo = geo
        ctx.shapes = (E, N, P)
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        x, dt, A, B, C, D, h0 = ctx.saved_tensors
        geo = ctx.geo
        E, N, P = ctx.shapes
        dev = x.device
        prec = _prec(x.dtype)
        dy = dy.contiguous()
        h, _ = _run_fwd_h(x, dt, A, B, h0, geo, E, N, P, False)
        dh = torch.empty_like(h)
        dh0 = torch.empty(geo.n_seqs, E, N, P, dtype=torch.float32, device=dev) if h0 is not None else None
        dhT_c = dhT.contiguous() if dhT is not None else None
        args = (dy, dt, A, C, dhT_c if dhT_c is not None else dh, dh, dh0 if dh0 is not None else dh,
                geo.cu, geo.cu_ch, geo.T, geo.NC, E, N, P)
        lowp = _lowp(x.dtype)
        consts = dict(HAS_DFINAL=dhT_c is not None, STORE_DH0=dh0 is not None, IS_VARLEN=geo.varlen,
                      LOWP=False, CHUNK=geo.L, PREC=prec)
        key = (N, P, x.dtype, geo.L)
        _launch("bwd_dh", _bwd_dh_kernel, _seq_grid(geo, E, N, P), args, consts, N, P, key)
        dx = torch.empty_like(x)
        args = (dt, A, B, C, D if D is not None else A, dh, dy, dx, geo.ts, geo.te, geo.T, geo.NC, E, N, P)
        consts = dict(HAS_D=D is not None, IS_VARLEN=geo.varlen, LOWP=lowp, CHUNK=geo.L, PREC=prec)
        _launch("bwd_dx", _bwd_dx_kernel, lambda c: (geo.U, E, triton.cdiv(P, c["BLOCK_P"])), args, consts, N, P, key)
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
        ddt = torch.empty(dt.shape, dtype=torch.float32, device=dev)
        # Surplus programs of a packed batch write nothing: their partials must read as zeros.
        alloc = torch.zeros if geo.varlen else torch.empty
        dA_part = alloc(geo.U, E, dtype=torch.float32, device=dev)
        dD_part = alloc(geo.U, E, P, dtype=torch.float32, device=dev) if D is not None else dA_part
        args = (x, dt, A, B, C, h, dh, dy, ddt, dB, dC, dA_part, dD_part,
                geo.ts, geo.te, geo.T, geo.NC, E, N, P)
        _launch("bwd_dqk", _bwd_dqk_kernel, lambda c: (geo.U, E), args, consts, N, P, key)
        dA = dA_part.sum(0).to(A.dtype)
        dD = dD_part.sum(0).to(D.dtype) if D is not None else None
        return (
            dx, ddt.to(dt.dtype), dA, dB, dC, dD,
            dh0.to(h0.dtype) if dh0 is not None else None,
            None, None, None,
        )


def mosse_scan_triton(
    x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    chunk_size: int = DEFAULT_CHUNK,
):
    """The MoSSE scan through the Triton kernels; contract of :func:`mossnet.ops.mosse_scan`.

    Inputs are assumed validated by the dispatcher (shapes, devices). ``cu_seqlens`` values are
    not read back to the host (no synchronisation); they must start at 0, be non-decreasing and
    end at the packed length, as the dispatcher documents.
    """
    batch, T, E, P = x.shape
    N = B.shape[-1]
    if N > MAX_STATE_DIM or x.dtype == torch.float64:
        from .chunked import mosse_scan_chunked

        warnings.warn(
            f"mossnet: Triton MoSSE scan does not handle N={N} / {x.dtype}; using the 'chunked' scan",
            RuntimeWarning, stacklevel=2,
        )
        if cu_seqlens is not None:
            from .interface import _chunked_varlen

            return _chunked_varlen(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, chunk_size)
        return mosse_scan_chunked(x, dt, A, B, C, D, initial_state, output_final_state, chunk_size)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"mosse_scan_triton: chunk_size must be a power of two >= 16, got {chunk_size}")
    n_states = batch if cu_seqlens is None else cu_seqlens.numel() - 1
    if batch * T == 0:  # nothing to scan: y is empty and the state passes through
        y = x.new_zeros(x.shape) + 0 * x
        if not output_final_state:
            return y, None
        if initial_state is None:
            return y, torch.zeros(n_states, E, N, P, dtype=torch.float32, device=x.device)
        return y, initial_state.float() * 1.0
    y, final = _MosseScanTriton.apply(x, dt, A, B, C, D, initial_state, cu_seqlens, output_final_state, chunk_size)
    return y, final


def why_unavailable(x: torch.Tensor) -> str | None:
    """None when the Triton path can run on tensors like ``x``; else the reason."""
    if x.device.type != "cuda":
        if _interpreting() and x.device.type == "cpu":
            return None
        return f"tensors are on {x.device.type}, not CUDA (set TRITON_INTERPRET=1 to run the kernels on CPU)"
    if x.dtype == torch.float64:
        return "float64 inputs are not supported by the Triton kernels"
    return None


register_fast_path("triton", mosse_scan_triton, why_unavailable)
