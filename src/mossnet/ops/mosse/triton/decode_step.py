"""One generated token through a MoSSE layer's chosen experts, from their projections to the gated
outputs, in one Triton kernel (inference only; reference: the PyTorch step in
``layers/mosse_decode.py``, which tests compare against).

One program per (batch row, chosen expert e), in fp32 registers:

    window, new  -> conv   = bias_e + sum_t w_e[:, t] * [window; new][t]   (K taps, per channel)
    x, B, C      = SiLU(conv) split (P, N, N);  window <- [window[1:]; new]  (in place)
    dt           = softplus(dt_raw + dt_bias_e);  decay = exp(-dt * exp(A_log_e))
    h            <- decay * h + dt * B x^T                                   (N, P, in place)
    y            = C^T h + D_e * x
    out          = gate * RMSNorm_P(y * SiLU(z + z_bias_e)) * norm_weight_e

About thirty PyTorch launches per layer per token become one: at batch 1 the decode step is
bound by launches, not by bytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...launch_grid import next_power_of_2


@triton.jit
def _softplus(v):
    # torch's softplus (threshold 20): v itself above it, log(1 + exp(v)) below
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def decode_step_kernel(xbc_ptr, z_ptr, dtraw_ptr, idx_ptr, gate_ptr, win_ptr, h_ptr,
                       cw_ptr, cb_ptr, dtb_ptr, alog_ptr, d_ptr, nw_ptr, zb_ptr, out_ptr,
                       k, E, P, N, eps, s_xbc, s_z, s_dt,
                       KW: tl.constexpr, ROWS: tl.constexpr, HAS_ZB: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """One program per (batch row, chosen expert). The window and the state are updated in place,
    and a tile smaller than the program's threads is held by several warps at once, each loading
    and storing its copy: every load of them must come before the barrier and every store after
    it, or a warp may read a row or a state that another warp has already overwritten (a race
    that sends one row's decode astray now and then)."""
    pid = tl.program_id(0)  # = b * k + j
    b = pid // k
    e = tl.load(idx_ptr + pid)
    C = P + 2 * N
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    r = tl.arange(0, ROWS)  # window rows, oldest first (K-1 of them, padded to a power of two)
    mp = p < P
    mn = n < N
    mr = r < KW - 1
    # three channel groups of the conv: x (P), B (N), C (N)
    ch_x = p
    ch_b = P + n
    ch_c = P + N + n
    new_x = tl.load(xbc_ptr + pid * s_xbc + ch_x, mask=mp, other=0.0).to(win_ptr.dtype.element_ty)
    new_b = tl.load(xbc_ptr + pid * s_xbc + ch_b, mask=mn, other=0.0).to(win_ptr.dtype.element_ty)
    new_c = tl.load(xbc_ptr + pid * s_xbc + ch_c, mask=mn, other=0.0).to(win_ptr.dtype.element_ty)
    win = win_ptr + (b * E + e) * (KW - 1) * C  # (K-1, C) of this (row, expert)
    cw = cw_ptr + e * C * KW  # (C, K): window row t meets tap t, the new input tap K-1
    rx = mr[:, None] & mp[None, :]
    rn = mr[:, None] & mn[None, :]
    win_x = tl.load(win + r[:, None] * C + ch_x[None, :], mask=rx, other=0.0)  # (ROWS, BLOCK_P)
    win_b = tl.load(win + r[:, None] * C + ch_b[None, :], mask=rn, other=0.0)
    win_c = tl.load(win + r[:, None] * C + ch_c[None, :], mask=rn, other=0.0)
    acc_x = tl.load(cb_ptr + e * C + ch_x, mask=mp, other=0.0).to(tl.float32)
    acc_b = tl.load(cb_ptr + e * C + ch_b, mask=mn, other=0.0).to(tl.float32)
    acc_c = tl.load(cb_ptr + e * C + ch_c, mask=mn, other=0.0).to(tl.float32)
    acc_x += tl.load(cw + ch_x * KW + (KW - 1), mask=mp, other=0.0).to(tl.float32) * new_x.to(tl.float32)
    acc_b += tl.load(cw + ch_b * KW + (KW - 1), mask=mn, other=0.0).to(tl.float32) * new_b.to(tl.float32)
    acc_c += tl.load(cw + ch_c * KW + (KW - 1), mask=mn, other=0.0).to(tl.float32) * new_c.to(tl.float32)
    acc_x += tl.sum(tl.load(cw + ch_x[None, :] * KW + r[:, None], mask=rx, other=0.0).to(tl.float32)
                    * win_x.to(tl.float32), axis=0)
    acc_b += tl.sum(tl.load(cw + ch_b[None, :] * KW + r[:, None], mask=rn, other=0.0).to(tl.float32)
                    * win_b.to(tl.float32), axis=0)
    acc_c += tl.sum(tl.load(cw + ch_c[None, :] * KW + r[:, None], mask=rn, other=0.0).to(tl.float32)
                    * win_c.to(tl.float32), axis=0)
    x = acc_x * tl.sigmoid(acc_x)
    Bv = acc_b * tl.sigmoid(acc_b)
    Cv = acc_c * tl.sigmoid(acc_c)

    dt = _softplus(tl.load(dtraw_ptr + pid * s_dt).to(tl.float32) + tl.load(dtb_ptr + e).to(tl.float32))
    decay = tl.exp(-dt * tl.exp(tl.load(alog_ptr + e).to(tl.float32)))
    h_off = (b * E + e) * N * P + n[:, None] * P + p[None, :]
    mnp = mn[:, None] & mp[None, :]
    h = tl.load(h_ptr + h_off, mask=mnp, other=0.0).to(tl.float32)
    h = decay * h + (dt * Bv)[:, None] * x[None, :]

    tl.debug_barrier()  # every load of the window and the state above, every store of them below
    # The shift: row t goes to row t-1 (row 0 drops out), the new input becomes the last row.
    shifted = r[:, None] >= 1
    tl.store(win + (r[:, None] - 1) * C + ch_x[None, :], win_x, mask=rx & shifted)
    tl.store(win + (r[:, None] - 1) * C + ch_b[None, :], win_b, mask=rn & shifted)
    tl.store(win + (r[:, None] - 1) * C + ch_c[None, :], win_c, mask=rn & shifted)
    tl.store(win + (KW - 2) * C + ch_x, new_x, mask=mp)
    tl.store(win + (KW - 2) * C + ch_b, new_b, mask=mn)
    tl.store(win + (KW - 2) * C + ch_c, new_c, mask=mn)
    tl.store(h_ptr + h_off, h, mask=mnp)
    y = tl.sum(Cv[:, None] * h, axis=0) + tl.load(d_ptr + e * P + p, mask=mp, other=0.0).to(tl.float32) * x

    zz = tl.load(z_ptr + pid * s_z + p, mask=mp, other=0.0).to(tl.float32)
    if HAS_ZB:
        zz += tl.load(zb_ptr + e * P + p, mask=mp, other=0.0).to(tl.float32)
    a = y * (zz * tl.sigmoid(zz))
    a = tl.where(mp, a, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(a * a, axis=0) / P + eps)
    w = tl.load(nw_ptr + e * P + p, mask=mp, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + pid).to(tl.float32)
    tl.store(out_ptr + pid * P + p, a * rstd * w * gate, mask=mp)


def decode_step_triton(xBC, z, dt_raw, idx, gates, window, ssm_state, conv_weight, conv_bias, dt_bias, A_log, D,
                       norm_weight, z_bias, eps: float) -> torch.Tensor:
    """The fused step (module docstring). xBC (batch, k, P+2N), z (batch, k, P), dt_raw
    (batch, k, 1), idx (batch, k) int64, gates (batch, k); window (batch, E, K-1, P+2N) and
    ssm_state (batch, E, N, P) are advanced in place; the parameters are the layer's, per expert.
    Returns the gated outputs (batch, k, P) fp32."""
    batch, k, C = xBC.shape
    E, N, P = ssm_state.shape[1:]
    K = conv_weight.shape[-1]
    # (batch, k, F) rows addressed as (batch * k) rows of one stride: views of a split qualify
    xBC, z, dt_raw = (t if t.stride(-1) == 1 and t.stride(0) == k * t.stride(1) else t.contiguous()
                      for t in (xBC, z, dt_raw))
    out = torch.empty(batch, k, P, dtype=torch.float32, device=xBC.device)
    params = [t.contiguous() for t in (conv_weight, conv_bias, dt_bias, A_log, D, norm_weight)]
    zb = z_bias.contiguous() if z_bias is not None else params[-1]
    decode_step_kernel[(batch * k,)](
        xBC, z, dt_raw, idx.contiguous(), gates.contiguous(), window, ssm_state, *params[:5], params[5], zb, out,
        k, E, P, N, eps, xBC.stride(1), z.stride(1), dt_raw.stride(1),
        KW=K, ROWS=max(1, next_power_of_2(K - 1)), HAS_ZB=z_bias is not None,
        BLOCK_P=next_power_of_2(P), BLOCK_N=next_power_of_2(N))
    return out
