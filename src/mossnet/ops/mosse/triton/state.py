"""The state passes: the chunk states h_c in the forward, their gradients dh_c in the backward.

Per expert e and chunk c of L tokens, with a_i = cumsum(dt * A_e) inside the chunk and
K_j = dt_j B_j, the state at the start of chunk c + 1 is

    h_{c+1} = exp(a_L) h_c + sum_j exp(a_L - a_j) K_j x_j^T            (N, P), fp32

and the gradient w.r.t. the state at the end of chunk c runs the other way:

    dh_{c-1} = exp(a_L) dh_c + sum_i exp(a_i) C_i dy_i^T

Both kernels run one program per (sequence, expert, N-block x P-block) and walk that
sequence's chunks in order, the state in registers. They multiply in fp32 (tf32 for half
inputs) even when the output kernels use half-precision operands: rounding the scaled B (or C)
operand to bf16 here cost the final state, dh0 and dA about 1e-3 relative RMS each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .geometry import Geometry, seq_bounds
from .tuning import KernelChoices, stage_kernel

# Tuning candidates: the first is the untuned default. These kernels tile N as well as P (more
# programs in flight for a sequential walk). ROW_SKIP: token rows with dt == 0 (not routed to the
# expert) are not even loaded, so routing sparsity saves memory traffic. maxnreg=128: ptxas
# otherwise spends 150-250 registers a thread on these small blocks, which keeps 8-12 warps per
# SM; capped, these tiles compile with no spills and 16 warps fit (benchmarks/scan_kernel_resources.py).
# 16 x 16 without ROW_SKIP is not a fwd_h candidate: it was the slowest at both tuned shapes of
# benchmarks/results/bench_scan_graph_h100.json, and each kernel keeps at most four (tuning time).


@stage_kernel([
    triton.Config(dict(BLOCK_N=16, BLOCK_P=16, ROW_SKIP=True), num_warps=1, num_stages=3),
    triton.Config(dict(BLOCK_N=32, BLOCK_P=32, ROW_SKIP=False), num_warps=4, num_stages=2),
    triton.Config(dict(BLOCK_N=16, BLOCK_P=32, ROW_SKIP=True), num_warps=2, num_stages=2),
    triton.Config(dict(BLOCK_N=16, BLOCK_P=32, ROW_SKIP=True), num_warps=2, num_stages=2, maxnreg=128),
])
def fwd_h_kernel(
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
    t0, t1, c0, c1 = seq_bounds(s, cu_ptr, cuch_ptr, T, NC, IS_VARLEN)
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


@stage_kernel([
    triton.Config(dict(BLOCK_N=16, BLOCK_P=16), num_warps=1, num_stages=3),
    triton.Config(dict(BLOCK_N=32, BLOCK_P=32), num_warps=4, num_stages=2),
    triton.Config(dict(BLOCK_N=16, BLOCK_P=32), num_warps=2, num_stages=2),
    triton.Config(dict(BLOCK_N=32, BLOCK_P=32), num_warps=4, num_stages=2, maxnreg=128),
])
def bwd_dh_kernel(
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
    t0, t1, c0, c1 = seq_bounds(s, cu_ptr, cuch_ptr, T, NC, IS_VARLEN)
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


def fwd_h(x, dt, A, B, h0, geo: Geometry, choices: KernelChoices, store_final: bool):
    """Every chunk's start state and, if ``store_final``, each sequence's final state.

    Args:
        x: (batch, T, E, P). dt: (batch, T, E). A: (E,). B: (batch, T, E, N). All contiguous.
        h0: (n_seqs, E, N, P) initial states, or None for zeros.
    Returns:
        h (U, E, N, P) in ``choices.state_dtype``, slot g the state at the start of global
        chunk g; and the final states (n_seqs, E, N, P) fp32, or None.
    """
    E, P, N = x.shape[2], x.shape[3], B.shape[-1]
    h = torch.empty(geo.U, E, N, P, dtype=choices.state_dtype, device=x.device)
    hT = torch.empty(geo.n_seqs, E, N, P, dtype=torch.float32, device=x.device) if store_final else h
    args = (x, dt, A, B, h0 if h0 is not None else h, h, hT, geo.cu, geo.cu_ch, geo.T, geo.NC, E, N, P)
    consts = dict(HAS_INIT=h0 is not None, STORE_FINAL=store_final, IS_VARLEN=geo.varlen,
                  LOWP=False, CHUNK=geo.L, PREC=choices.prec)
    fwd_h_kernel.launch(geo.per_sequence_grid(E, N, P), args, consts, choices)
    return h, (hT if store_final else None)


def bwd_dh(dy, dt, A, C, dhT, with_dh0: bool, geo: Geometry, choices: KernelChoices):
    """Gradients w.r.t. every chunk's end state and, if ``with_dh0``, the initial states.

    Args:
        dy: (batch, T, E, P). dt: (batch, T, E). A: (E,). C: (batch, T, E, N). All contiguous.
        dhT: (n_seqs, E, N, P) gradient of the final states, or None for zeros.
    Returns:
        dh (U, E, N, P) in ``choices.state_dtype``, slot g the gradient w.r.t. the state at the
        end of chunk g; and dh0 (n_seqs, E, N, P) fp32, or None.
    """
    E, P, N = dy.shape[2], dy.shape[3], C.shape[-1]
    dh = torch.empty(geo.U, E, N, P, dtype=choices.state_dtype, device=dy.device)
    dh0 = torch.empty(geo.n_seqs, E, N, P, dtype=torch.float32, device=dy.device) if with_dh0 else None
    dhT = dhT.contiguous() if dhT is not None else None
    args = (dy, dt, A, C, dhT if dhT is not None else dh, dh, dh0 if dh0 is not None else dh,
            geo.cu, geo.cu_ch, geo.T, geo.NC, E, N, P)
    consts = dict(HAS_DFINAL=dhT is not None, STORE_DH0=with_dh0, IS_VARLEN=geo.varlen,
                  LOWP=False, CHUNK=geo.L, PREC=choices.prec)
    bwd_dh_kernel.launch(geo.per_sequence_grid(E, N, P), args, consts, choices)
    return dh, dh0
