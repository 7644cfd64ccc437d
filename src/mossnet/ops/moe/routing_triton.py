"""Softmax top-k over router logits in one Triton kernel each way (reference and contract:
:func:`mossnet.ops.moe.routing.softmax_top_k_reference`).

In PyTorch the router's softmax, stable sort, slicing and renormalisation are about eight
launches forward and ten backward, on (n, E) tensors of a few experts: launch-bound work. Here
one program handles a block of tokens, all E experts of each in registers; the top k are found
by k passes of max-then-lowest-index (the sort's tie rule), so k is a compile-time constant.
The row's log-sum-exp (the z-loss's input) comes out of the same pass: torch.logsumexp alone is
about nine launches forward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..function_call import apply_function
from ..launch_grid import cdiv, next_power_of_2


@triton.jit
def _tile(n, E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < n
    return rows, cols, row_ok, row_ok[:, None] & (cols[None, :] < E)


@triton.jit
def softmax_top_k_fwd_kernel(logits_ptr, probs_ptr, idx_ptr, gates_ptr, lse_ptr, n, E,
                             K: tl.constexpr, RENORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    rows, cols, row_ok, mask = _tile(n, E, BLOCK_T, BLOCK_E)
    off = rows[:, None] * E + cols[None, :]
    logits = tl.load(logits_ptr + off, mask=mask, other=-float("inf"))
    top = tl.max(logits, axis=1)
    e = tl.exp(logits - top[:, None])
    e = tl.where(mask, e, 0.0)
    denom = tl.sum(e, axis=1)
    probs = e / denom[:, None]
    tl.store(probs_ptr + off, probs, mask=mask)
    tl.store(lse_ptr + rows, top + tl.log(denom), mask=row_ok)
    total = tl.zeros([BLOCK_T], dtype=tl.float32)
    if RENORM:  # the chosen probabilities' sum, first: one more pass over E registers
        work = tl.where(mask, probs, -1.0)
        for _ in tl.static_range(K):
            best = tl.max(work, axis=1)
            pick = tl.min(tl.where(work == best[:, None], cols[None, :], BLOCK_E), axis=1)
            total += best
            work = tl.where(cols[None, :] == pick[:, None], -1.0, work)
    work = tl.where(mask, probs, -1.0)
    for j in tl.static_range(K):
        best = tl.max(work, axis=1)
        pick = tl.min(tl.where(work == best[:, None], cols[None, :], BLOCK_E), axis=1)
        tl.store(idx_ptr + rows * K + j, pick.to(tl.int64), mask=row_ok)
        gate = best / total if RENORM else best
        tl.store(gates_ptr + rows * K + j, gate, mask=row_ok)
        work = tl.where(cols[None, :] == pick[:, None], -1.0, work)


@triton.jit
def softmax_top_k_bwd_kernel(probs_ptr, idx_ptr, gates_ptr, dprobs_ptr, dgates_ptr, dlse_ptr, dlogits_ptr, n, E,
                             K: tl.constexpr, RENORM: tl.constexpr, HAS_DPROBS: tl.constexpr, HAS_DLSE: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    rows, cols, row_ok, mask = _tile(n, E, BLOCK_T, BLOCK_E)
    off = rows[:, None] * E + cols[None, :]
    probs = tl.load(probs_ptr + off, mask=mask, other=0.0)
    if HAS_DPROBS:
        dp = tl.load(dprobs_ptr + off, mask=mask, other=0.0)
    else:
        dp = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
    # gates g_j = p_j / S (RENORM, S = the chosen p's sum) or p_j: dp_j += (dg_j - sum_i dg_i g_i) / S, or dg_j
    dot = tl.zeros([BLOCK_T], dtype=tl.float32)
    total = tl.zeros([BLOCK_T], dtype=tl.float32)
    if RENORM:
        for j in tl.static_range(K):
            g = tl.load(gates_ptr + rows * K + j, mask=row_ok, other=0.0)
            dot += g * tl.load(dgates_ptr + rows * K + j, mask=row_ok, other=0.0)
            pick = tl.load(idx_ptr + rows * K + j, mask=row_ok, other=0).to(tl.int32)
            total += tl.sum(tl.where(cols[None, :] == pick[:, None], probs, 0.0), axis=1)
    for j in tl.static_range(K):
        pick = tl.load(idx_ptr + rows * K + j, mask=row_ok, other=0).to(tl.int32)
        dg = tl.load(dgates_ptr + rows * K + j, mask=row_ok, other=0.0)
        grad = (dg - dot) / total if RENORM else dg
        dp += tl.where(cols[None, :] == pick[:, None], grad[:, None], 0.0)
    dlogits = probs * (dp - tl.sum(dp * probs, axis=1)[:, None])
    if HAS_DLSE:  # d lse / d logits = probs
        dlogits += probs * tl.load(dlse_ptr + rows, mask=row_ok, other=0.0)[:, None]
    tl.store(dlogits_ptr + off, dlogits, mask=mask)


def _grid(n: int, E: int):
    block_e = next_power_of_2(E)
    block_t = max(1, min(128, 2048 // block_e))
    return (cdiv(n, block_t),), block_t, block_e


class SoftmaxTopKTriton(torch.autograd.Function):
    """(probs, top_idx, gates, lse) = softmax_top_k(logits, k, renormalize); fp32 logits."""

    @staticmethod
    def forward(ctx, logits, k: int, renormalize: bool):
        logits = logits.contiguous()
        n, E = logits.shape
        probs = torch.empty_like(logits)
        idx = torch.empty(n, k, dtype=torch.int64, device=logits.device)
        gates = torch.empty(n, k, dtype=logits.dtype, device=logits.device)
        lse = torch.empty(n, dtype=logits.dtype, device=logits.device)
        grid, block_t, block_e = _grid(n, E)
        if n:
            softmax_top_k_fwd_kernel[grid](logits, probs, idx, gates, lse, n, E, K=k, RENORM=renormalize,
                                           BLOCK_T=block_t, BLOCK_E=block_e)
        ctx.save_for_backward(probs, idx, gates)
        ctx.renormalize = renormalize
        ctx.mark_non_differentiable(idx)
        return probs, idx, gates, lse

    @staticmethod
    def backward(ctx, dprobs, _didx, dgates, dlse):
        probs, idx, gates = ctx.saved_tensors
        n, E = probs.shape
        k = idx.shape[1]
        dgates = torch.zeros_like(gates) if dgates is None else dgates.contiguous()
        dlogits = torch.empty_like(probs)
        grid, block_t, block_e = _grid(n, E)
        if n:
            # An absent gradient gets a placeholder pointer (never read: its HAS_ flag is off).
            softmax_top_k_bwd_kernel[grid](probs, idx, gates, dprobs.contiguous() if dprobs is not None else probs,
                                           dgates, dlse.contiguous() if dlse is not None else probs, dlogits, n, E,
                                           K=k, RENORM=ctx.renormalize, HAS_DPROBS=dprobs is not None,
                                           HAS_DLSE=dlse is not None, BLOCK_T=block_t, BLOCK_E=block_e)
        return dlogits, None, None


def softmax_top_k_triton(logits: torch.Tensor, k: int, renormalize: bool):
    """The fused softmax top-k (module docstring); arguments as the reference takes them."""
    return apply_function(SoftmaxTopKTriton, logits, k, renormalize)


# ---------------------------------------------------------------------------------- router losses
# The load-balancing and z losses (reference: mossnet.layers.router.RouterOutput._losses) reduce
# the router's (n, E) probabilities and (n,) log-sum-exps to two scalars: about ten launches
# forward and ten backward in PyTorch, per router. Here one program reduces them (n * E is small)
# and one pass writes both gradients.


@triton.jit
def router_losses_fwd_kernel(probs_ptr, lse_ptr, valid_ptr, counts_ptr, out_ptr, n, E, TOP_K: tl.constexpr,
                             HAS_VALID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < E
    prob_sum = tl.zeros([BLOCK_E], dtype=tl.float32)
    z_sum = tl.zeros([BLOCK_T], dtype=tl.float32)
    weight_sum = tl.zeros([BLOCK_T], dtype=tl.float32)
    for first in range(0, n, BLOCK_T):
        rows = first + tl.arange(0, BLOCK_T)
        row_ok = rows < n
        w = row_ok.to(tl.float32)
        if HAS_VALID:
            w = tl.load(valid_ptr + rows, mask=row_ok, other=0).to(tl.float32)
        p = tl.load(probs_ptr + rows[:, None] * E + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        prob_sum += tl.sum(p * w[:, None], axis=0)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        z_sum += lse * lse * w
        weight_sum += w
    n_valid = tl.maximum(tl.sum(weight_sum, axis=0), 1.0)
    counts = tl.load(counts_ptr + cols, mask=col_ok, other=0).to(tl.float32)
    aux = E * tl.sum((counts / (TOP_K * n_valid)) * (prob_sum / n_valid), axis=0)
    tl.store(out_ptr, aux)
    tl.store(out_ptr + 1, tl.sum(z_sum, axis=0) / n_valid)
    tl.store(out_ptr + 2, n_valid)


@triton.jit
def router_losses_bwd_kernel(lse_ptr, valid_ptr, counts_ptr, out_ptr, daux_ptr, dz_ptr, dprobs_ptr, dlse_ptr, n, E,
                             TOP_K: tl.constexpr, HAS_VALID: tl.constexpr, HAS_DAUX: tl.constexpr,
                             HAS_DZ: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    # d aux / d probs[i, e] = E * counts[e] * w_i / (k * n_valid^2);  d z / d lse[i] = 2 lse[i] w_i / n_valid
    rows, cols, row_ok, mask = _tile(n, E, BLOCK_T, BLOCK_E)
    n_valid = tl.load(out_ptr + 2)
    w = row_ok.to(tl.float32)
    if HAS_VALID:
        w = tl.load(valid_ptr + rows, mask=row_ok, other=0).to(tl.float32)
    daux = tl.load(daux_ptr) if HAS_DAUX else 0.0
    dz = tl.load(dz_ptr) if HAS_DZ else 0.0
    counts = tl.load(counts_ptr + cols, mask=cols < E, other=0).to(tl.float32)
    per_expert = daux * E * counts / (TOP_K * n_valid * n_valid)
    tl.store(dprobs_ptr + rows[:, None] * E + cols[None, :], w[:, None] * per_expert[None, :], mask=mask)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    tl.store(dlse_ptr + rows, 2.0 * dz * lse * w / n_valid, mask=row_ok)


class RouterLossesTriton(torch.autograd.Function):
    """(aux, z) of fp32 probs (n, E), lse (n,), counts (E,) and valid (n,) bool or None."""

    @staticmethod
    def forward(ctx, probs, lse, counts, valid, k: int):
        probs, lse, counts = probs.contiguous(), lse.contiguous(), counts.contiguous()
        keep = valid.contiguous().view(torch.uint8) if valid is not None else lse  # lse: an unread stand-in
        n, E = probs.shape
        out = torch.empty(3, dtype=torch.float32, device=probs.device)  # aux, z, n_valid
        block_e = next_power_of_2(E)
        block_t = max(16, min(1024, 4096 // block_e))
        router_losses_fwd_kernel[(1,)](probs, lse, keep, counts, out, n, E, TOP_K=k, HAS_VALID=valid is not None,
                                       BLOCK_T=block_t, BLOCK_E=block_e)
        ctx.save_for_backward(lse, keep, counts, out)
        ctx.shape, ctx.k, ctx.has_valid = (n, E), k, valid is not None
        return out[0], out[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, daux, dz):
        lse, keep, counts, out = ctx.saved_tensors
        n, E = ctx.shape
        dprobs = torch.empty(n, E, dtype=torch.float32, device=lse.device)
        dlse = torch.empty_like(lse)
        grid, block_t, block_e = _grid(n, E)
        if n:
            router_losses_bwd_kernel[grid](lse, keep, counts, out, daux if daux is not None else out,
                                           dz if dz is not None else out, dprobs, dlse, n, E, TOP_K=ctx.k,
                                           HAS_VALID=ctx.has_valid, HAS_DAUX=daux is not None, HAS_DZ=dz is not None,
                                           BLOCK_T=block_t, BLOCK_E=block_e)
        return dprobs, dlse, None, None, None


def router_losses_triton(probs: torch.Tensor, lse: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor | None,
                         k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The router's (L_aux, L_z) in one launch each way (section above)."""
    return apply_function(RouterLossesTriton, probs, lse, counts, valid, k)
