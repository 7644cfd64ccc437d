"""Time mixing: the mixture of state-space experts (MoSSE), spec section 2.

Each of E experts is one head of a routed linear attention: its own projection, short conv,
selective scan and gated norm. The router picks k experts per token. With
``state_update="routed"`` an expert's conv and scan see only the tokens routed to it (its
state does not move otherwise), and only those tokens are projected (grouped GEMM over the
sorted assignments); with ``"all"`` every expert processes every token and the router only
gates the outputs.

Two layouts of the full-sequence forward compute the same function:

* **compact** (``_forward_compact``): only the n*k dispatched rows, sorted by expert and, inside
  an expert, by (batch row, time). Each (expert, batch row) pair is a contiguous segment, so the
  conv (:func:`~mossnet.ops.conv.segment_causal_conv`) and the scan (one head, ``cu_seqlens``
  over the E*batch segments) run on the rows directly: k/E of the dense elementwise work and
  memory. Used for ``state_update="routed"`` on a fresh forward over whole rows -- no carried or
  returned states, no packed documents (``position_ids``); padding is fine. This is the
  training and plain-evaluation case, in eager mode (under ``torch.compile`` the dense layout
  is used: see ``_compact_applies``).
* **dense** (``_forward_dense``): the routed rows scattered into (batch, T, E, ...) and every
  expert's conv and scan masked by its visits. The general path (``"all"``, generation with
  states, packed documents) and the reference the compact layout is tested against; set the
  module attribute ``compact_routing = False`` to force it everywhere.

Shapes: D = d_model, E experts, P = head (value) dim, N = state dim, K = conv width,
C = P + 2N conv channels, F = 2P + 2N + 1 projected features [z, x, B, C, d].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv import gather_rows, routed_causal_conv, segment_causal_conv
from ..ops.moe import dispatch_by_expert, grouped_linear
from ..ops.moe.gathered_linear import gathered_linear
from ..ops.mosse import mosse_scan
from ..ops.mosse.naive import compute_dtype_for, ssm_step
from .norm import gated_rms_norm
from .router import Router, RouterOutput, RouterReport
from .sequence_layout import SequenceLayout


# The smallest |A| the compact layout folds into dt (see ``_forward_compact``): a power of two
# far below any decay that rounds to something other than 1 over a realistic sequence.
ZERO_DECAY_FLOOR = 2.0**-60


def step_size(dt_raw: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """The dt rule of every layout and of decode: dt = softplus(dt_raw + dt_bias), in dt_bias's
    dtype (fp32, or fp64 for fp64 layers).

    dt_raw: (..., 1) projected feature; dt_bias: broadcastable to (...). Returns (...).
    """
    return F.softplus(dt_raw.squeeze(-1).to(dt_bias.dtype) + dt_bias)


class MoSSE(nn.Module):
    """Mixture of state-space experts.

    Parameters (stacked per expert): ``in_proj`` (E, F, D), ``conv_weight`` (E, C, K),
    ``conv_bias`` (E, C), ``dt_bias`` (E,), ``A_log`` (E,), ``D`` (E, P), ``norm_weight`` (E, P),
    ``out_proj`` (E, D, P) and the router (E, D); with ``config.ssm_z_bias`` also ``z_bias``
    (E, P), added to z before SiLU (zero at init). With one expert there is no router and the
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
        # Set False (tests, benchmarks) to force the dense reference layout everywhere.
        self.compact_routing = True
        self.router = Router(D, E, config.ssm_top_k, config.router_renormalize) if E > 1 else None
        self.in_proj = nn.Parameter(torch.empty(E, 2 * P + 2 * N + 1, D))
        self.conv_weight = nn.Parameter(torch.empty(E, P + 2 * N, K))
        self.conv_bias = nn.Parameter(torch.zeros(E, P + 2 * N))
        self.dt_bias = nn.Parameter(torch.empty(E))
        self.A_log = nn.Parameter(torch.empty(E))
        self.D = nn.Parameter(torch.ones(E, P))
        self.norm_weight = nn.Parameter(torch.ones(E, P))
        self.out_proj = nn.Parameter(torch.empty(E, D, P))
        # Spec section 8: lets a converted model start with SiLU(z) a non-zero constant.
        self.z_bias = nn.Parameter(torch.zeros(E, P)) if getattr(config, "ssm_z_bias", False) else None

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
        layout: SequenceLayout | None = None,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        return_states: bool = False,
        decode: bool = False,
    ):
        """Run the layer over a whole (chunk of a) sequence, or one decode token.

        The one entry point: wrappers that hook ``forward`` (PEFT's ``ParamWrapper``, FSDP,
        ``torch.export``) see every call, decode included.

        Args:
            u: (batch, T, D) normalised input.
            layout: padding / packed-document layout of the batch (None: every token valid,
                one sequence per row).
            conv_state: (batch, E, K-1, C) and ssm_state: (batch, E, N, P) fp32 carried from a
                previous chunk (generation), or None.
            return_states: also return the new (conv_state, ssm_state).
            decode: one generated token per row (T = 1, no padding): the step math of
                :meth:`_decode_token`, touching only the routed experts. Both states are
                required and are advanced in place (a static cache, so the step can be
                captured in a CUDA graph); nothing else is returned.
        Returns:
            o (batch, T, D), a :class:`RouterReport` (None with one expert or in decode), and
            the new states (None unless ``return_states``).
        """
        if decode:
            if conv_state is None or ssm_state is None or u.shape[1] != 1:
                raise ValueError(
                    f"MoSSE decode takes one token per row (batch, 1, D) and both states; got u {tuple(u.shape)}"
                )
            return self._decode_token(u[:, 0], conv_state, ssm_state)[:, None], None, None
        batch, T, Dm = u.shape
        layout = layout if layout is not None else SequenceLayout.build(batch, T)
        n = batch * T
        flat = u.reshape(n, Dm)
        valid = None if layout.valid is None else layout.valid.reshape(n)
        routing = self.route(flat, valid)
        assign = dispatch_by_expert(routing.top_idx, valid, self.n_experts)

        if self._compact_applies(layout, conv_state, ssm_state, return_states):
            rows, states = self._forward_compact(u, routing, assign), None
        else:
            rows, states = self._forward_dense(u, valid, layout, routing, assign, conv_state, ssm_state, return_states)

        # Read-out, shared by both layouts: rows (n*k, P) in dispatch order -> W_o of each
        # row's expert -> summed back onto the tokens.
        w_out = self.out_proj if torch.is_autocast_enabled() else self.out_proj.to(u.dtype)
        out_rows = grouped_linear(rows.to(u.dtype), w_out, assign.offsets)  # (n*k, D)
        o = out_rows.new_zeros(n, Dm).index_add(0, assign.token, out_rows).view(batch, T, Dm)
        report = RouterReport.of(routing, assign.counts) if self.router is not None else None
        return o, report, states

    def _compact_applies(self, layout: SequenceLayout, conv_state, ssm_state, return_states) -> bool:
        """The compact layout covers a fresh routed forward over whole rows (training, plain
        evaluation), padding included. Carried or returned states (generation) and packed
        documents take the dense layout, which handles both."""
        # Eager only for now: compiled by torch.compile (torch 2.13, CPU, 2 threads) the compact
        # layout's gradients came out wrong (tests/ops/test_segments.py); the dense layout
        # compiles correctly, so a compiled model uses it. Not yet checked on a GPU.
        return (
            self.compact_routing
            and not torch.compiler.is_compiling()
            and self.routed
            and layout.cu_seqlens is None
            and conv_state is None
            and ssm_state is None
            and not return_states
        )

    def _forward_dense(self, u, valid, layout, routing, assign, conv_state, ssm_state, return_states):
        """The masked dense layout: every expert's conv and scan over (batch, T, E, ...).

        Args:
            u: (batch, T, D); valid: (n,) bool or None; routing / assign of the n = batch*T tokens.
        Returns:
            rows (n*k, P): the gated, normed expert outputs in dispatch order, and the new
            (conv_state, ssm_state) if ``return_states`` else None.
        """
        batch, T, Dm = u.shape
        E, P, N = self.n_experts, self.head_dim, self.state_dim
        n = batch * T
        flat = u.reshape(n, Dm)

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
        if self.z_bias is not None:
            z = z + self.z_bias.to(z.dtype)  # (batch, T, E, P) + (E, P)
        xBC, new_conv = routed_causal_conv(
            xBC, self.conv_weight, self.conv_bias, visit, layout.doc_id, conv_state, return_states
        )
        xBC = F.silu(xBC)
        x, B, C = xBC.split([P, N, N], dim=-1)
        # Step sizes and decays in fp32 (fp64 when the layer runs in fp64, as the identity tests do).
        sdt = compute_dtype_for(u)
        dt = step_size(d, self.dt_bias.to(sdt)) * visit
        A = -torch.exp(self.A_log.to(sdt))

        y, final = self._scan(x, dt, A, B, C, layout, ssm_state, return_states)

        gates = routing.dense_gates(E).view(batch, T, E, 1)
        yhat = gated_rms_norm(y, z, self.norm_weight, self.eps) * gates  # (batch, T, E, P) fp32
        rows = yhat.reshape(n * E, P)[assign.token * E + assign.expert.clamp(max=E - 1)]
        return rows, ((new_conv, final) if return_states else None)

    def _forward_compact(self, u, routing, assign) -> torch.Tensor:
        """The compact layout: only the n*k dispatched rows, never a (batch, T, E, ...) tensor.

        The dispatch sorts rows by expert, stably, so inside an expert they stay in flat token
        order b*T + t: each (expert e, batch row b) pair is one contiguous segment holding e's
        subsequence of row b in time order -- exactly the sequence the routed conv and scan of
        expert e must see. Padding rows (expert id E) sort last and form one extra trailing
        segment: they touch no real segment, their gate is 0 and ``grouped_linear`` zeroes
        their output rows, so they are computed (fixed shapes) but never used.

        Args:
            u: (batch, T, D); routing / assign of the n = batch*T tokens.
        Returns:
            rows (n*k, P): the gated, normed expert outputs in dispatch order.
        """
        batch, T, Dm = u.shape
        E, P, N = self.n_experts, self.head_dim, self.state_dim
        flat = u.reshape(batch * T, Dm)
        expert = assign.expert.clamp(max=E - 1)  # padding rows borrow expert E-1's parameters

        # Segment boundaries on the device, fixed shape (E*batch + 2,): segment e*batch + b,
        # and E*batch for padding. scatter_add_, not bincount (which reads its max to the host).
        segment = (assign.expert * batch + torch.div(assign.token, T, rounding_mode="floor")).clamp(max=E * batch)
        sizes = torch.zeros(E * batch + 1, dtype=torch.long, device=u.device)
        sizes.scatter_add_(0, segment, torch.ones_like(segment))
        cu = F.pad(torch.cumsum(sizes, 0), (1, 0)).to(torch.int32)

        w_in = self.in_proj.to(flat.dtype) if not torch.is_autocast_enabled() else self.in_proj
        proj = grouped_linear(flat[assign.token], w_in, assign.offsets)  # (n*k, F)
        z, xBC, d = self._split(proj)
        if self.z_bias is not None:
            z = z + gather_rows(self.z_bias, expert).to(z.dtype)  # each row's expert's bias
        xBC = F.silu(segment_causal_conv(xBC, self.conv_weight, self.conv_bias, expert, cu))
        x, B, C = xBC.split([P, N, N], dim=-1)

        # One scan "head" for all experts. The scan takes one A per head, so fold each row's
        # |A_e| into its step: with dt' = dt |A_e| and A' = -1,
        #     h'_t = exp(-dt'_t) h'_{t-1} + dt'_t B_t x_t^T = |A_e| h_t   (h_t: the true state),
        # since exp(-dt'_t) = exp(dt_t A_e) and the input term is |A_e| times the true one; so
        # C_t h'_t = |A_e| C_t h_t and y_t = C_t h'_t / |A_e| + D_e x_t. Dividing the output (in
        # fp32) rather than x or B keeps the scan's inputs unrounded; D is applied here, per row.
        # dt and A stay in fp32 (fp64 for fp64 layers), as in the dense layout.
        # Zero decay (A_log = -inf, A_e = 0) must stay finite and exact: |A_e| is floored at
        # ZERO_DECAY_FLOOR = 2^-60. A power of two, so dt |A_e| and the division below are exact
        # rescalings; the decay exp(-dt 2^-60) is 1 in fp32 (and within 2^-54 dt of 1 in fp64),
        # which is what A_e = 0 gives, or any |A_e| below the floor. The Triton scan
        # takes cu_seqlens without a host sync; the plain PyTorch scans ("chunked", "reference")
        # read it back to the host, as they do for any packed batch.
        sdt = compute_dtype_for(u)
        # Each row's expert's dt bias, |A_e|, D_e and norm weight in one gather (they are fp32
        # parameters even in bf16 models; the norm upcasts its weight anyway).
        table = torch.cat(
            [self.dt_bias[:, None], torch.exp(self.A_log).clamp(min=ZERO_DECAY_FLOOR)[:, None], self.D,
             self.norm_weight], dim=1
        ).to(sdt)  # (E, 2 + 2P)
        dt_bias, neg_A, D, norm_weight = gather_rows(table, expert).split([1, 1, P, P], dim=1)
        neg_A = neg_A.squeeze(1)  # |A_e| per row, (n*k,)
        dt = step_size(d, dt_bias.squeeze(1))
        unit = lambda t: t[None, :, None]  # noqa: E731  (n*k, ...) -> (1, n*k, 1, ...): one head
        y, _ = mosse_scan(
            unit(x), unit(dt * neg_A), -torch.ones(1, dtype=sdt, device=u.device), unit(B), unit(C),
            cu_seqlens=cu, impl=self.scan_impl, chunk_size=self.chunk_size,
        )
        y = y[0, :, 0].to(sdt) / neg_A[:, None] + D * x.to(sdt)  # (n*k, P)

        gates = routing.top_gates.reshape(-1).index_select(0, assign.slot)  # sorted rows' gates
        return gated_rms_norm(y, z, norm_weight, self.eps) * gates[:, None]

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
    def _decode_token(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
        """One generated token (``forward(..., decode=True)``), touching only the routed
        experts' weights and states.

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
        if self.z_bias is not None:
            z = z + self.z_bias[idx].to(z.dtype)  # (batch, kv, P)

        C_ch = P + 2 * N
        K = self.conv_kernel
        gather4 = lambda t, size: t.gather(1, idx[:, :, None, None].expand(-1, -1, *size))  # noqa: E731
        window = torch.cat([gather4(conv_state, (K - 1, C_ch)), xBC[:, :, None, :].to(conv_state.dtype)], dim=2)
        conv_state.scatter_(1, idx[:, :, None, None].expand(-1, -1, K - 1, C_ch), window[:, :, 1:])
        conv_out = (window * self.conv_weight[idx].transpose(-1, -2)).sum(2) + self.conv_bias[idx]
        x, B, C = F.silu(conv_out).split([P, N, N], dim=-1)

        sdt = compute_dtype_for(u)
        dt = step_size(d, self.dt_bias[idx].to(sdt))
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
        if self.z_bias is not None:
            self.z_bias.zero_()
        out_std = std / math.sqrt(2 * config.n_layers) if config.rescale_residual else std
        nn.init.normal_(self.out_proj, std=out_std)
        if self.router is not None:
            nn.init.normal_(self.router.weight, std=std)
