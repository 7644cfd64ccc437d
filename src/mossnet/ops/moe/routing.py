"""Softmax top-k over router logits (spec section 2.1): the PyTorch reference and the choice of
the fused Triton kernel (``routing_triton.py``) by the policy's ``fused_ops``.

For each token: probs = softmax(logits); the k most probable experts, best first, ties to the
lower expert index; their gates, the chosen probabilities renormalised to sum to 1 when
``renormalize`` (else the probabilities themselves); and the log-sum-exp of the logits, which the
router's z-loss squares.

Then the router's two losses (spec section 4) from those probabilities and log-sum-exps: the
reference, and a fused kernel each way.
"""

from __future__ import annotations

import torch

from mossnet.ops.fused import choose, why_triton_cannot_run

MAX_EXPERTS = 256  # one row of experts per register tile; more take the reference


def softmax_top_k_reference(logits: torch.Tensor, k: int, renormalize: bool):
    """logits: (n, E) float. Returns probs (n, E), top_idx (n, k) int64, gates (n, k) and
    lse (n,) = logsumexp(logits), in logits' dtype."""
    probs = torch.softmax(logits, dim=-1)
    # A stable descending sort keeps the lower index first among equal probabilities.
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    top_p, top_idx = sorted_probs[:, :k], order[:, :k]
    gates = top_p / top_p.sum(-1, keepdim=True) if renormalize else top_p
    return probs, top_idx, gates, torch.logsumexp(logits, dim=-1)


def why_not_fused(logits: torch.Tensor) -> str | None:
    """None when the fused kernel can run on these logits; else the reason."""
    reason = why_triton_cannot_run(logits)
    if reason is not None:
        return reason
    if logits.dtype != torch.float32:
        return f"the router computes in {logits.dtype}; the kernel computes in float32"
    if logits.shape[-1] > MAX_EXPERTS:
        return f"{logits.shape[-1]} experts are more than the kernel's {MAX_EXPERTS}"
    return None


def softmax_top_k(logits: torch.Tensor, k: int, renormalize: bool, impl: str = "auto"):
    """:func:`softmax_top_k_reference` through ``impl`` ("auto", "reference" or "triton"; see
    :mod:`mossnet.ops.fused`)."""
    if not choose("the fused router softmax top-k", impl, lambda: why_not_fused(logits), logits.is_cuda):
        return softmax_top_k_reference(logits, k, renormalize)
    from .routing_triton import softmax_top_k_triton

    return softmax_top_k_triton(logits, k, renormalize)


def router_losses_reference(probs: torch.Tensor, lse: torch.Tensor, counts: torch.Tensor,
                            valid: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Load-balancing and z losses over the valid tokens (spec section 4).

    probs: (n, E) router probabilities; lse: (n,) log-sum-exp of the logits; counts: (E,)
    dispatches per expert (padding excluded); valid: (n,) bool or None (every token counts).
    Returns (L_aux, L_z); L_aux equals 1 at perfect balance."""
    n, E = probs.shape
    if valid is None:
        # Every token counts: plain means, no weight vector.
        n_valid = max(n, 1)
        mean_prob = probs.sum(0) / n_valid
        z = torch.dot(lse, lse) / n_valid
    else:
        weight = valid.to(probs.dtype)
        n_valid = weight.sum().clamp(min=1.0)
        mean_prob = (probs * weight[:, None]).sum(0) / n_valid
        z = (lse.pow(2) * weight).sum() / n_valid
    fraction = counts.to(probs.dtype) / (k * n_valid)
    return E * torch.dot(fraction, mean_prob), z


def router_losses(probs: torch.Tensor, lse: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor | None, k: int,
                  impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`router_losses_reference` through ``impl`` ("auto", "reference" or "triton"): the
    kernel reduces both losses in one launch and writes both gradients in one more, where
    PyTorch takes about ten launches each way."""
    if not choose("the fused router losses", impl, lambda: why_not_fused(probs), probs.is_cuda):
        return router_losses_reference(probs, lse, counts, valid, k)
    from .routing_triton import router_losses_triton

    return router_losses_triton(probs, lse, counts, valid, k)
