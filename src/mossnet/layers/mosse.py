"""Time mixing: the mixture of state-space experts (MoSSE), spec section 2.

Each of E experts is one head of a routed linear attention: its own projection, short conv,
selective scan and gated norm. The router picks k experts per token. With
``state_update="routed"`` an expert's conv and scan see only the tokens routed to it (its
state does not move otherwise), and only those tokens are projected (grouped GEMM over the
sorted assignments); with ``"all"`` every expert processes every token and the router only
gates the outputs.

Shapes: D = d_model, E experts, P = head (value) dim, N = state dim, K = conv width,
C = P + 2N conv channels, F = 2P + 2N + 1 projected features [z, x, B, C, d].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv import routed_causal_conv
from ..ops.moe import dispatch_by_expert, grouped_linear
from ..ops.moe.gathered_linear import gathered_linear
from ..ops.mosse import mosse_scan
from ..ops.mosse.naive import compute_dtype_for, ssm_step
from .norm import gated_rms_norm
from .router import Router, RouterOutput, RouterReport
from .sequence_layout import SequenceLayout


class MoSSE(nn.Module):
    """Mixture of state-space experts.

    Parameters (stacked per expert): ``in_proj`` (E, F, D), ``conv_weight`` (E, C, K),
    ``conv_bias`` (E, C), ``dt_bias`` (E,), ``A_log`` (E,), ``D`` (E, P), ``norm_weight`` (E, P),
    ``out_proj`` (E, D, P) and the router (E, D). With one expert there is no router and the
    gate is 1 (a single-head selective SSM, the Mamba-like baseline).
    """

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        D, E = config.d_model, config.ssm_experts
        P, N, K = config.ssm_head_dim, config.ssm_state_dim, config.conv_kernel
        self.layer_idx = layer_idx
        self.n_experts, self.top_k = E, config.ssm_top_k
        self.head_dim, self.state_dim, self.conv_kernel = P, N, K
        self.routed = config.state_update == "routed"
        self.eps = config.rms_norm_eps
        self.scan_impl, self.chunk_size = config.scan_impl, config.chunk_size
        self.router = Router(D, E, config.ssm_top_k, config.router_renormalize) if E > 1 else None
        self.in_proj = nn.Parameter(torch.empty(E, 2 * P + 2 * N + 1, D))
        self.conv_weight = nn.Parameter(torch.empty(E, P + 2 * N, K))
        self.conv_bias = nn.Parameter(torch.zeros(E, P + 2 * N))
        self.dt_bias = nn.Parameter(torch.empty(E))
        self.A_log = nn.Parameter(torch.empty(E))
        self.D = nn.Parameter(torch.ones(E, P))
        self.norm_weight = nn.Parameter(torch.ones(E, P))
        self.out_proj = nn.Parameter(torch.empty(E, D, P))

    # ----------------------------------------------------------------- routing
    def route(self, u: torch.Tensor, valid: torch.Tensor | None) -> RouterOutput:
        """u: (n, D). A single expert takes every valid token with gate 1."""
        if self.router is not None:
            return self.router(u, valid)
        n = u.shape[0]
        ones = u.new_ones(n, 1, dtype=torch.float32)
        gates = ones if valid is None else ones * valid[:, None]
        idx = torch.zeros(n, 1, dtype=torch.long, device=u.device)
        return RouterOutput(ones.log(), ones, idx, gates, valid)

    def _split(self, proj: torch.Tensor):
        P, N = self.head_dim, self.state_dim
        return proj.split([P, P + 2 * N, 1], dim=-1)  # z, xBC, d

    # ----------------------------------------------------------------- full sequence
    def forward(
        self,
        u: torch.Tensor,
        layout: SequenceLayout,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        return_states: bool = False,
    ):
        """Run the layer over a whole (chunk of a) sequence.

        Args:
            u: (batch, T, D) normalised input.
            layout: padding / packed-document layout of the batch.
            conv_state: (batch, E, K-1, C) and ssm_state: (batch, E, N, P) fp32 carried from a
                previous chunk (generation), or None.
            return_states: also return the new (conv_state, ssm_state).
        Returns:
            o (batch, T, D), a :class:`RouterReport` (None with one expert), and the new states
            (or None).
        """
        batch, T, Dm = u.shape
        E, P, N = self.n_experts, self.head_dim, self.state_dim
        n = batch * T
        flat = u.reshape(n, Dm)
        valid = None if layout.valid is None else layout.valid.reshape(n)
        routing = self.route(flat, valid)
        assign = dispatch_by_expert(routing.top_idx, valid, E)

        # Which tokens each expert processes (its "sequence"), and their projections.
        w_in = self.in_proj.to(flat.dtype) if not torch.is_autocast_enabled() else self.in_proj
        if self.routed:
            # scatter_ with a scalar, not an indexed assignment: ``t[idx] = True`` copies the value
            # from host memory, a host synchronisation on CUDA (issue 4: none in the training step).
            visit = torch.zeros(n, E + 1, dtype=torch.bool, device=u.device).scatter_(1, routing.top_idx, True)
            if valid is not None:
                visit = visit & valid[:, None]
            visit = visit[:, :E]
            rows = grouped_linear(flat[assign.token], w_in, assign.offsets)  # (n*k, F)
            where = assign.token * E + assign.expert.clamp(max=E - 1)
            proj = rows.new_zeros(n * E, rows.shape[-1]).index_add(0, where, rows).view(batch, T, E, -1)
        else:
            visit = torch.ones(n, E, dtype=torch.bool, device=u.device)
            if valid is not None:
                visit = visit & valid[:, None]
            proj = torch.einsum("nd,efd->nef", flat, w_in).view(batch, T, E, -1)
        visit = visit.view(batch, T, E)

        z, xBC, d = self._split(proj)
        xBC, new_conv = routed_causal_conv(
            xBC, self.conv_weight, self.conv_bias, visit, layout.doc_id, conv_state, return_states
        )
        xBC = F.silu(xBC)
        x, B, C = xBC.split([P, N, N], dim=-1)
        # Step sizes and decays in fp32 (fp64 when the layer runs in fp64, as the identity tests do).
        sdt = compute_dtype_for(u)
        dt = F.softplus(d.squeeze(-1).to(sdt) + self.dt_bias.to(sdt)) * visit
        A = -torch.exp(self.A_log.to(sdt))

        y, final = self._scan(x, dt, A, B, C, layout, ssm_state, return_states)

        gates = routing.dense_gates(E).view(batch, T, E, 1)
        yhat = gated_rms_norm(y, z, self.norm_weight, self.eps) * gates  # (batch, T, E, P) fp32
        rows = yhat.reshape(n * E, P)[assign.token * E + assign.expert.clamp(max=E - 1)]
        w_out = self.out_proj if torch.is_autocast_enabled() else self.out_proj.to(u.dtype)
        out_rows = grouped_linear(rows.to(u.dtype), w_out, assign.offsets)  # (n*k, D)
        o = out_rows.new_zeros(n, Dm).index_add(0, assign.token, out_rows).view(batch, T, Dm)
        report = RouterReport.of(routing, assign.counts) if self.router is not None else None
        states = (new_conv, final) if return_states else None
        return o, report, states

    def _scan(self, x, dt, A, B, C, layout: SequenceLayout, ssm_state, return_states):
        """The scan over (batch, T), or over the flattened batch when documents are packed."""
        if layout.cu_seqlens is None:
            return mosse_scan(
                x, dt, A, B, C, self.D, ssm_state, return_states,
                impl=self.scan_impl, chunk_size=self.chunk_size,
            )
        batch, T = x.shape[:2]
        flat = lambda t: t.reshape(1, batch * T, *t.shape[2:])  # noqa: E731
        y, final = mosse_scan(
            flat(x), flat(dt), A, flat(B), flat(C), self.D, layout.scatter_initial_state(ssm_state),
            return_states, cu_seqlens=layout.cu_seqlens, impl=self.scan_impl, chunk_size=self.chunk_size,
        )
        return y.view(batch, T, *y.shape[2:]), layout.gather_final_state(final)

    # ----------------------------------------------------------------- one token
    @torch.no_grad()
    def step(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One generated token, touching only the routed experts' weights and states.

        Args:
            u: (batch, D). conv_state: (batch, E, K-1, C), ssm_state: (batch, E, N, P); both
                updated in place (a static cache, so the step can be captured in a CUDA graph).
        Returns:
            o: (batch, D).
        """
        batch = u.shape[0]
        E, P, N = self.n_experts, self.head_dim, self.state_dim
        routing = self.route(u, None)
        if self.routed:
            idx, gates = routing.top_idx, routing.top_gates  # (batch, k)
        else:  # every expert's state moves; the router still gates the outputs
            idx = torch.arange(E, device=u.device).expand(batch, E)
            gates = routing.dense_gates(E)
        kv = idx.shape[1]
        # Only the routed experts' projections are read (no copy of their weights on the CPU).
        proj = gathered_linear(u.to(self.in_proj.dtype)[:, None, :].expand(-1, kv, -1), self.in_proj, idx)
        z, xBC, d = self._split(proj)

        C_ch = P + 2 * N
        K = self.conv_kernel
        gather4 = lambda t, size: t.gather(1, idx[:, :, None, None].expand(-1, -1, *size))  # noqa: E731
        window = torch.cat([gather4(conv_state, (K - 1, C_ch)), xBC[:, :, None, :].to(conv_state.dtype)], dim=2)
        conv_state.scatter_(1, idx[:, :, None, None].expand(-1, -1, K - 1, C_ch), window[:, :, 1:])
        conv_out = (window * self.conv_weight[idx].transpose(-1, -2)).sum(2) + self.conv_bias[idx]
        x, B, C = F.silu(conv_out).split([P, N, N], dim=-1)

        sdt = compute_dtype_for(u)
        dt = F.softplus(d.squeeze(-1).to(sdt) + self.dt_bias[idx].to(sdt))
        A = -torch.exp(self.A_log[idx].to(sdt))
        y, new_state = ssm_step(gather4(ssm_state, (N, P)), x, dt, A, B, C, self.D[idx])
        ssm_state.scatter_(1, idx[:, :, None, None].expand(-1, -1, N, P), new_state.to(ssm_state.dtype))

        yhat = gated_rms_norm(y, z, self.norm_weight[idx], self.eps) * gates[..., None]
        return gathered_linear(yhat.to(self.out_proj.dtype), self.out_proj, idx).sum(1)  # (batch, D)

    # ----------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self, config) -> None:
        """Mamba-2-style init: dt bias = softplus^-1 of a log-uniform step in [dt_min, dt_max];
        A = -uniform(A_init_range) stored as A_log; D = 1; residual output scaled by depth."""
        std = config.initializer_range
        E = self.n_experts
        nn.init.normal_(self.in_proj, std=std)
        nn.init.uniform_(self.conv_weight, -1 / math.sqrt(self.conv_kernel), 1 / math.sqrt(self.conv_kernel))
        self.conv_bias.zero_()
        dt = torch.exp(torch.rand(E) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min))
        dt = dt.clamp(min=config.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        lo, hi = config.A_init_range
        self.A_log.copy_(torch.log(torch.empty(E).uniform_(lo, hi)))
        self.D.fill_(1.0)
        self.norm_weight.fill_(1.0)
        out_std = std / math.sqrt(2 * config.n_layers) if config.rescale_residual else std
        nn.init.normal_(self.out_proj, std=out_std)
        if self.router is not None:
            nn.init.normal_(self.router.weight, std=std)
