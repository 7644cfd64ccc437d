"""Channel mixing: a dropless mixture of SwiGLU experts (spec section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..execution import DEFAULT_POLICY, ExecutionPolicy
from ..ops.moe import dispatch_by_expert, grouped_linear
from ..ops.moe.combine import combine, gather_token_rows
from ..ops.moe.gathered_linear import gathered_linear
from ..ops.moe.swiglu import swiglu
from .router import Router, RouterReport


class SwiGLU(nn.Module):
    """Dense SwiGLU MLP: (..., D) -> (..., D)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, u: torch.Tensor, fused_ops: str = "auto") -> torch.Tensor:
        """``fused_ops``: the policy's choice for the activation (:func:`~mossnet.ops.moe.swiglu.swiglu`)."""
        # The fp32 residual meets weights loaded in bf16 (from_pretrained(dtype=bf16), no autocast):
        # run in the weights' dtype. A no-op for fp32 weights and under autocast's fp32 masters.
        u = u.to(self.gate_up.weight.dtype)
        return self.down(swiglu(self.gate_up(u), fused_ops))


class MoEMLP(nn.Module):
    """Top-k routed SwiGLU experts, dropless, with an optional always-on shared expert.

    Tokens are sorted by expert and each expert runs one matrix product over its contiguous
    group (:mod:`mossnet.ops.moe`); there is no loop over tokens. ``n_experts == 1`` is a plain
    dense SwiGLU (no router, no aux loss).
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int, renormalize: bool, shared_expert: bool):
        super().__init__()
        self.n_experts = n_experts
        if n_experts == 1:
            self.dense = SwiGLU(d_model, hidden)
        else:
            self.router = Router(d_model, n_experts, top_k, renormalize)
            self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))  # W_1 || W_3 per expert
            self.down = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.shared = SwiGLU(d_model, hidden) if shared_expert else None

    def forward(
        self, u: torch.Tensor, valid: torch.Tensor | None = None, decode: bool = False,
        policy: ExecutionPolicy | None = None,
    ) -> tuple[torch.Tensor, RouterReport | None]:
        """u: (n, D) tokens; valid: (n,) bool (padding gets output 0). Returns (n, D) and the
        router report (None for a dense MLP).

        ``decode=True`` (a few generated tokens, no padding): the same function without
        router statistics (the report is None), through :meth:`_decode_tokens` when there are
        at most ``policy.decode_direct_max_pairs`` (token, expert) pairs. Decode enters here
        too, so wrappers that hook ``forward`` see it. ``policy``: the expert-matmul choice.
        """
        policy = DEFAULT_POLICY if policy is None else policy
        if decode:
            return self._decode_tokens(u, policy), None
        keep = None if valid is None else valid[:, None].to(u.dtype)
        report = None
        fused = policy.fused_ops
        if self.n_experts == 1:
            out = self.dense(u, fused)
        else:
            routing = self.router(u, valid, policy)
            d = dispatch_by_expert(routing.top_idx, valid, self.n_experts, fused)
            matmul = dict(impl=policy.expert_matmul, every_row_routed=d.every_row_routed)
            hidden = grouped_linear(gather_token_rows(u, d, fused), self.gate_up, d.offsets, **matmul)
            rows = grouped_linear(swiglu(hidden, fused), self.down, d.offsets, **matmul)
            out = combine(rows, routing.top_gates, d, fused)  # gated sum of each token's k rows
            report = RouterReport.of(routing, d.counts)
        if self.shared is not None:
            out = out + self.shared(u, fused)
        if keep is not None:
            out = out * keep.to(out.dtype)
        return out, report

    def _decode_tokens(self, u: torch.Tensor, policy: ExecutionPolicy) -> torch.Tensor:
        """The decode path: ``forward(u)[0]`` for a few tokens (no padding), without sorting,
        group offsets or router statistics. Each token's k experts are applied directly
        (:func:`~mossnet.ops.moe.gathered_linear.gathered_linear`), touching only their weights.

        u: (n, D) -> (n, D).
        """
        if self.n_experts == 1 or u.shape[0] * self.router.top_k > policy.decode_direct_max_pairs:
            return self.forward(u, policy=policy)[0]
        routing = self.router(u, policy=policy)
        idx = routing.top_idx  # (n, k)
        fused = policy.fused_ops
        hidden = gathered_linear(u[:, None, :].expand(-1, idx.shape[1], -1), self.gate_up, idx, fused)
        rows = gathered_linear(swiglu(hidden, fused), self.down, idx, fused)  # (n, k, D)
        out = (rows * routing.top_gates[..., None].to(rows.dtype)).sum(1)
        if self.shared is not None:
            out = out + self.shared(u, fused)
        return out


def moe_mlp_reference(mlp: MoEMLP, u: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Token by token, expert by expert: the obvious computation, for tests."""
    out = torch.zeros_like(u)
    routing = mlp.router(u, valid, DEFAULT_POLICY.replace(fused_ops="reference"))
    H = mlp.down.shape[-1]
    for i in range(u.shape[0]):
        if valid is not None and not valid[i]:
            continue
        for slot in range(routing.top_idx.shape[1]):
            e = int(routing.top_idx[i, slot])
            h = mlp.gate_up[e] @ u[i]
            out[i] += routing.top_gates[i, slot] * (mlp.down[e] @ (F.silu(h[:H]) * h[H:]))
        if mlp.shared is not None:
            out[i] += mlp.shared(u[i])
    return out
