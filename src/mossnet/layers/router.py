"""The softmax top-k router shared by the MoSSE and the MoE-MLP (spec sections 2.1 and 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..execution import DEFAULT_POLICY, ExecutionPolicy
from ..ops.moe.routing import router_losses, softmax_top_k


@dataclass
class RouterOutput:
    """What one router decided for n tokens.

    logits, probs: (n, E) fp32. top_idx: (n, k) chosen experts, best first. top_gates: (n, k)
    gates g (zero for padding tokens). valid: (n,) bool or None. lse: (n,) logsumexp of the
    logits (the z-loss's input). fused_ops: the policy's choice for the losses.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    top_idx: torch.Tensor
    top_gates: torch.Tensor
    valid: torch.Tensor | None
    lse: torch.Tensor
    fused_ops: str = "reference"  # how the losses run: the policy's choice, from the router

    def dense_gates(self, n_experts: int) -> torch.Tensor:
        """(n, E) gates with zeros for unchosen experts."""
        return self.top_gates.new_zeros(self.top_gates.shape[0], n_experts).scatter(1, self.top_idx, self.top_gates)

    def losses(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Load-balancing and z losses over the valid tokens (spec section 4; the reference is
        :func:`~mossnet.ops.moe.routing.router_losses_reference`).

        ``counts`` (E,): dispatches per expert (padding excluded). Returns (L_aux, L_z);
        L_aux equals 1 at perfect balance.
        """
        k = self.top_idx.shape[1]
        with torch.autocast(device_type=self.probs.device.type, enabled=False):  # losses in fp32, as the router
            return router_losses(self.probs, self.lse, counts, self.valid, k, self.fused_ops)


class Router(nn.Module):
    """Linear logits -> softmax -> top-k, in fp32 (fp64 for fp64 inputs); ties go to the lower
    expert index.

    Gates: pi renormalised over the chosen experts when ``k > 1 and renormalize``; otherwise
    the raw probabilities of the chosen experts (with k = 1 a renormalised gate would be the
    constant 1 and the router would learn nothing from the LM loss).
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, renormalize: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        self.top_k = top_k
        self.renormalize = renormalize and top_k > 1

    def forward(self, u: torch.Tensor, valid: torch.Tensor | None = None,
                policy: ExecutionPolicy | None = None) -> RouterOutput:
        """u: (n, D); valid: (n,) bool or None; policy: its ``fused_ops`` picks the softmax top-k."""
        cdt = torch.promote_types(u.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        if torch.is_autocast_enabled(u.device.type):  # the logits stay in fp32 under autocast
            with torch.autocast(device_type=u.device.type, enabled=False):
                logits = u.to(cdt) @ self.weight.to(cdt).T
        else:  # no context to enter: it costs host time on every router call
            logits = u.to(cdt) @ self.weight.to(cdt).T
        impl = (DEFAULT_POLICY if policy is None else policy).fused_ops
        probs, top_idx, gates, lse = softmax_top_k(logits, self.top_k, self.renormalize, impl=impl)
        if valid is not None:
            gates = gates * valid[:, None].to(gates.dtype)
        return RouterOutput(logits, probs, top_idx, gates, valid, lse, impl)


class RouterReport:
    """Per-router statistics a layer hands up to the model: the per-expert load (tokens
    dispatched, padding excluded), the logits (for ``output_router_logits``) and the two losses.

    The losses are computed on first access, not when the layer runs: inference that fills a
    generation cache never reads them, and they are a dozen launches per router."""

    def __init__(self, routing: RouterOutput, counts: torch.Tensor):
        self._routing = routing
        self.load = counts
        self.logits = routing.logits
        self._cached_losses: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of(cls, routing: RouterOutput, counts: torch.Tensor) -> "RouterReport":
        return cls(routing, counts)

    @property
    def _losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached by hand: functools.cached_property takes a lock on Python < 3.12, and
        # torch.compile ends its graph at a lock.
        if self._cached_losses is None:
            self._cached_losses = self._routing.losses(self.load)
        return self._cached_losses

    @property
    def aux(self) -> torch.Tensor:
        """L_aux, the load-balancing loss (1 at perfect balance)."""
        return self._losses[0]

    @property
    def z(self) -> torch.Tensor:
        """L_z, the mean squared log-sum-exp of the router logits."""
        return self._losses[1]
