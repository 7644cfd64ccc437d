"""Time mixing: the mixture of state-space experts (MoSSE), spec section 2.

Each of E experts is one head of a routed linear attention: its own projection, short conv,
selective scan and gated norm. The router picks k experts per token. With
``state_update="routed"`` an expert's conv and scan see only the tokens routed to it (its
state does not move otherwise); with ``"all"`` every expert sees every token and the router
only gates the outputs.

One forward, over the compact layout: only the (token, expert) rows an expert processes,
sorted by expert (:func:`~mossnet.ops.moe.dispatch_by_expert`) and cut into one segment per
(expert, document) (:class:`~.expert_segments.ExpertSegments`). The projection is a grouped
matmul over the rows; the conv (:func:`~mossnet.ops.conv.segment_causal_conv`) and the scan
(one head, ``cu_seqlens`` over the segments) run on them directly, carried conv windows and SSM
states entering and leaving per segment. ``"all"`` is the case where every token is routed to
every expert; packed documents, padding and chunked prefill with a cache are segment
boundaries and initial states. Without those, "all" (or k = E) rows are uniform segments, and
the conv, scan and read-out take them as a plain batch. One generated token (``decode=True``)
takes the step: the same conv-window, step-size and read-out functions on the k routed experts'
cached state.

The ablation switches of spec section 7 change where the short conv runs, inside this one
forward. ``ssm_conv_placement="shared"``: one conv of u over the full sequence of every
document (padding skipped), before routing; each expert projects x, B, C from its output (then
SiLU, no per-expert conv), z and dt still from u. ``ssm_share_bc``: one projection of B, C
shared by all experts, convolved over the full sequence (or, with the shared conv, projected
from its output), then SiLU; each expert projects and convolves only z, x, dt. Both are
"sequence features": computed once per token, then gathered onto the expert rows.

Shapes: d_model, E experts, P = head (value) dim, N = state dim, K = conv width,
C = P + 2N conv channels, F = 2P + 2N + 1 projected features [z, x, B, C, dt_raw]; with
``ssm_share_bc`` C = P and F = 2P + 1 ([z, x, dt_raw]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..execution import DEFAULT_POLICY, ExecutionPolicy, tracing
from ..ops.conv import gather_rows, segment_causal_conv, segment_conv_silu
from ..ops.moe import ExpertDispatch, dispatch_by_expert, grouped_linear
from ..ops.moe.combine import combine, gather_token_rows
from ..ops.mosse import mosse_scan
from ..ops.mosse.naive import compute_dtype_for
from ..ops.mosse.read_out import read_out
from .expert_segments import ExpertSegments
from .mosse_decode import MoSSEDecodeStep
from .mosse_rules import ExpertRows, SequenceFeatures, _cast, fold_scale, scan_input_dtype, step_size
from .norm import gated_rms_norm
from .router import Router, RouterOutput, RouterReport
from .sequence_layout import SequenceLayout

class MoSSE(MoSSEDecodeStep, nn.Module):
    """Mixture of state-space experts.

    Parameters (stacked per expert): ``in_proj`` (E, F, d_model), ``conv_weight`` (E, C, K),
    ``conv_bias`` (E, C), ``dt_bias`` (E,), ``A_log`` (E,) with A = -exp(A_log) (``-inf``: no
    decay), ``D`` (E, P) the skip weights, ``norm_weight`` (E, P), ``out_proj`` (E, d_model, P),
    ``z_bias`` (E, P) with ``config.ssm_z_bias``, and the router (E, d_model). With one expert
    there is no router and the gate is 1 (a single-head selective SSM, the Mamba-like baseline).

    Section 7 switches (absent by default, so default checkpoints keep their keys): with
    ``ssm_conv_placement="shared"`` no per-expert conv, and ``shared_conv_weight`` (d_model, K),
    ``shared_conv_bias`` (d_model,) the conv of u; with ``ssm_share_bc`` ``bc_proj`` (2N, d_model)
    and, with expert placement, ``shared_conv_weight`` (2N, K), ``shared_conv_bias`` (2N,).
    """

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        d_model, E = config.d_model, config.ssm_experts
        P, N, K = config.ssm_head_dim, config.ssm_state_dim, config.conv_kernel
        self.layer_idx = layer_idx
        self.n_experts, self.experts_per_token = E, config.ssm_top_k
        self.head_dim, self.state_dim, self.conv_kernel = P, N, K
        self.routed = config.state_update == "routed"
        self.shared_conv = getattr(config, "ssm_conv_placement", "expert") == "shared"
        self.share_bc = bool(getattr(config, "ssm_share_bc", False))
        self.feature_dim = P if self.share_bc else P + 2 * N  # what each expert projects besides z, dt
        self.eps = config.rms_norm_eps
        self.router = Router(d_model, E, config.ssm_top_k, config.router_renormalize) if E > 1 else None
        self.in_proj = nn.Parameter(torch.empty(E, P + self.feature_dim + 1, d_model))
        expert_conv = not self.shared_conv  # the per-expert conv of section 2.4
        C = self.feature_dim
        self.register_parameter("conv_weight", nn.Parameter(torch.empty(E, C, K)) if expert_conv else None)
        self.register_parameter("conv_bias", nn.Parameter(torch.zeros(E, C)) if expert_conv else None)
        self.dt_bias = nn.Parameter(torch.empty(E))
        self.A_log = nn.Parameter(torch.empty(E))
        self.D = nn.Parameter(torch.ones(E, P))  # skip_D; the name is the checkpoint key
        self.norm_weight = nn.Parameter(torch.ones(E, P))
        self.out_proj = nn.Parameter(torch.empty(E, d_model, P))
        self.register_parameter("z_bias", nn.Parameter(torch.zeros(E, P)) if getattr(config, "ssm_z_bias", False) else None)
        # The conv over the full sequence (of u, or of the shared B, C), and the shared B, C projection.
        sequence_channels = d_model if self.shared_conv else (2 * N if self.share_bc else 0)
        has_sequence_conv = sequence_channels > 0
        self.register_parameter(
            "shared_conv_weight", nn.Parameter(torch.empty(sequence_channels, K)) if has_sequence_conv else None)
        self.register_parameter(
            "shared_conv_bias", nn.Parameter(torch.zeros(sequence_channels)) if has_sequence_conv else None)
        self.register_parameter("bc_proj", nn.Parameter(torch.empty(2 * N, d_model)) if self.share_bc else None)

    # ----------------------------------------------------------------- small shared rules
    def route(self, u: torch.Tensor, valid: torch.Tensor | None, policy: ExecutionPolicy) -> RouterOutput:
        """u: (n, d_model). A single expert takes every valid token with gate 1."""
        if self.router is not None:
            return self.router(u, valid, policy)
        n = u.shape[0]
        ones = u.new_ones(n, 1, dtype=torch.float32)
        gates = ones if valid is None else ones * valid[:, None]
        idx = torch.zeros(n, 1, dtype=torch.long, device=u.device)
        logits = ones.log()  # zeros: one expert of probability 1, so lse = 0
        return RouterOutput(logits, ones, idx, gates, valid, logits[:, 0])

    def _split(self, proj: torch.Tensor):
        """(..., F) -> z (..., P), xBC (..., C), dt_raw (..., 1)."""
        return proj.split([self.head_dim, self.feature_dim, 1], dim=-1)

    def _features(self, activated: torch.Tensor, shared_bc: torch.Tensor | None):
        """x, B, C of each row: activated (..., C) per-expert features after SiLU; shared_bc
        (..., 2N) the row's token's shared B|C (``ssm_share_bc``) or None."""
        P, N = self.head_dim, self.state_dim
        if shared_bc is None:
            return activated.split([P, N, N], dim=-1)
        return (activated, *shared_bc.split([N, N], dim=-1))

    def _split_windows(self, conv_state: torch.Tensor | None):
        """A layer's conv state (:func:`conv_window_shape`) -> (per-expert windows (batch, E,
        K-1, C) or None, the sequence conv's window (batch, K-1, channels) or None). Views: an
        in-place update of either reaches ``conv_state``."""
        if conv_state is None:
            return None, None
        if self.shared_conv:
            return None, conv_state
        if not self.share_bc:
            return conv_state, None
        E, K, P = self.n_experts, self.conv_kernel, self.head_dim
        split = E * (K - 1) * P
        experts = conv_state[:, :split].unflatten(1, (E, K - 1, P))
        return experts, conv_state[:, split:].unflatten(1, (K - 1, 2 * self.state_dim))

    @staticmethod
    def _join_windows(experts: torch.Tensor | None, sequence: torch.Tensor | None) -> torch.Tensor:
        """The inverse of :meth:`_split_windows` (new tensors, not views)."""
        if sequence is None:
            return experts
        if experts is None:
            return sequence
        return torch.cat([experts.flatten(1), sequence.flatten(1).to(experts.dtype)], dim=1)

    def _expert_rows(self, expert: torch.Tensor, dtype: torch.dtype, uniform: bool = False) -> ExpertRows:
        """Each row's expert's dt bias, decay rate, skip, norm weight and z bias (fp32 parameters
        even in bf16 models), in one gather; expert: (M,) int64 in [0, E). ``uniform``: the rows
        are E equal blocks in expert order, so a broadcast whose backward is a sum, not a scatter."""
        P = self.head_dim
        parts = [self.dt_bias[:, None], torch.exp(self.A_log)[:, None], self.D, self.norm_weight]
        if self.z_bias is not None:
            parts.append(self.z_bias)
        table = torch.cat([p.to(dtype) for p in parts], dim=1)  # (E, 2 + 2P [+ P])
        if uniform:
            E, M = table.shape[0], expert.numel()
            per_row = table[:, None].expand(E, M // E, table.shape[1]).reshape(M, table.shape[1])
        else:
            per_row = gather_rows(table, expert)
        rows = per_row.split([1, 1, P, P, P][: len(parts)], dim=1)
        z_bias = rows[4] if self.z_bias is not None else None
        return ExpertRows(rows[0].squeeze(1), rows[1].squeeze(1), rows[2], rows[3], z_bias)

    def _read_out(self, y: torch.Tensor, z: torch.Tensor, rows: ExpertRows) -> torch.Tensor:
        """The gated per-expert RMSNorm RMSNorm_P(y * SiLU(z + z_bias)) (router gate not applied)."""
        if rows.z_bias is not None:
            z = z + rows.z_bias
        return gated_rms_norm(y, z, rows.norm_weight, self.eps)

    # ----------------------------------------------------------------- full sequence
    def forward(
        self,
        u: torch.Tensor,
        layout: SequenceLayout | None = None,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        return_states: bool = False,
        decode: bool = False,
        policy: ExecutionPolicy | None = None,
    ):
        """Run the layer over a whole (chunk of a) sequence, or one decode token.

        The one entry point: wrappers that hook ``forward`` (PEFT's ``ParamWrapper``, FSDP,
        ``torch.export``) see every call, decode included.

        Args:
            u: (batch, T, d_model) normalised input.
            layout: padding / packed-document layout of the batch (None: every token valid,
                one sequence per row).
            conv_state: (batch, *conv_window_shape(config)) and ssm_state: (batch, E, N, P) fp32
                carried from a previous chunk (generation), or None (zeros).
            return_states: also return the new (conv_state, ssm_state).
            decode: one generated token per row (T = 1, no padding): the step of
                :meth:`_decode_token`, touching only the routed experts. Both states are
                required and are advanced in place (a static cache, so the step can be
                captured in a CUDA graph); nothing else is returned.
            policy: how to execute (scan and expert-matmul implementations); None = defaults.
        Returns:
            o (batch, T, d_model), a :class:`RouterReport` (None with one expert or in decode),
            and the new states (None unless ``return_states``).
        """
        policy = DEFAULT_POLICY if policy is None else policy
        if decode:
            if conv_state is None or ssm_state is None or u.shape[1] != 1:
                raise ValueError(
                    f"MoSSE decode takes one token per row (batch, 1, d_model) and both states; got u {tuple(u.shape)}"
                )
            return self._decode_token(u[:, 0], conv_state, ssm_state, policy)[:, None], None, None
        batch, T, d_model = u.shape
        layout = layout if layout is not None else SequenceLayout.build(batch, T)
        n = batch * T
        flat = u.reshape(n, d_model)
        valid = None if layout.valid is None else layout.valid.reshape(n)
        routing = self.route(flat, valid, policy)
        assign = dispatch_by_expert(routing.top_idx, valid, self.n_experts, policy.fused_ops)
        rows, routed_rows = self._scan_rows(assign, valid, n, layout, policy.fused_ops)
        segments = ExpertSegments.build(rows, layout, self.n_experts, every_pair=self._rows_hold_every_pair)
        expert_window, sequence_window = self._split_windows(conv_state)
        shared, sequence_final = self._sequence_features(flat, valid, layout, sequence_window, return_states,
                                                         policy.fused_ops)
        normed, states = self._mix(flat, rows, segments, expert_window, ssm_state, return_states, policy, shared)
        if states is not None:
            states = (self._join_windows(states[0], sequence_final), states[1])
        if routed_rows is not None:
            normed = normed.index_select(0, routed_rows)
        # Read-out: each routed row (n*k, P) -> W_o of its expert -> times its gate, summed onto the tokens.
        o = self._read_out_sum(normed, routing.top_gates, assign, n, segments.uniform and routed_rows is None,
                               u.dtype, policy)
        o = o.view(batch, T, d_model)
        report = RouterReport.of(routing, assign.counts) if self.router is not None else None
        return o, report, states

    def _read_out_sum(self, normed: torch.Tensor, top_gates: torch.Tensor, assign: ExpertDispatch, n: int,
                      every_token_in_order: bool, dtype: torch.dtype, policy: ExecutionPolicy) -> torch.Tensor:
        """o (n, d_model) = sum over each token's k rows of gate * W_o[expert] @ row.

        normed: (n*k, P) rows in dispatch order; top_gates: (n, k) the router's gates. The gate
        is a scalar per row, so it may come before or after W_o: the grouped path applies it in
        the combine (:func:`~mossnet.ops.moe.combine.combine`, one fused gather-and-sum). When the
        rows are E blocks of all n tokens in order (k = E, uniform segments), the sum over experts
        is the inner dimension of one (n, E*P) x (E*P, d_model) matmul, so the gate comes first."""
        w_out = self.out_proj if torch.is_autocast_enabled() else self.out_proj.to(dtype)  # (E, d_model, P)
        if every_token_in_order:
            E, d_model, P = w_out.shape
            gated = (normed * top_gates.reshape(-1).index_select(0, assign.slot)[:, None]).to(dtype)
            per_token = gated.view(E, n, P).transpose(0, 1).reshape(n, E * P)
            return F.linear(per_token, w_out.permute(1, 0, 2).reshape(d_model, E * P))
        out_rows = grouped_linear(normed.to(dtype), w_out, assign.offsets, impl=policy.expert_matmul,
                                  every_row_routed=assign.every_row_routed)  # (n*k, d_model)
        return combine(out_rows, top_gates, assign, policy.fused_ops)

    def _sequence_features(self, flat, valid, layout: SequenceLayout, window, return_states, fused_ops: str):
        """The features shared by all experts, convolved over the full sequence (no-op by default).

        Args:
            flat: (n, d_model) tokens; valid: (n,) bool or None; window: (batch, K-1, channels)
                the sequence conv's carried window, or None (zeros).
        Returns:
            :class:`SequenceFeatures`, and the final window (batch, K-1, channels) if
            ``return_states`` (else None).
        """
        if self.shared_conv_weight is None:
            return SequenceFeatures(), None
        conv_out, final = self._sequence_conv(self._sequence_conv_input(flat), valid, layout, window, return_states,
                                              fused_ops)
        return self._after_sequence_conv(conv_out), final

    def _sequence_conv_input(self, u: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> what the sequence conv convolves: u itself (shared placement) or
        the shared B|C projection (..., 2N)."""
        return u if self.shared_conv else F.linear(u, _cast(self.bc_proj, u))

    def _after_sequence_conv(self, conv_out: torch.Tensor) -> SequenceFeatures:
        """The sequence conv's output (..., channels) -> the shared features. Shared placement:
        conv(u) itself (no activation; the experts' projections of it get the SiLU), and with
        ``ssm_share_bc`` B|C = SiLU(W_bc conv(u)). Expert placement: B|C = SiLU(conv(W_bc u))."""
        if not self.shared_conv:
            return SequenceFeatures(bc=F.silu(conv_out))
        bc = F.silu(F.linear(conv_out, _cast(self.bc_proj, conv_out))) if self.share_bc else None
        return SequenceFeatures(conv_u=conv_out, bc=bc)

    def _sequence_conv(self, values, valid, layout: SequenceLayout, window, return_states, fused_ops: str):
        """The depthwise causal conv over each document's valid tokens in time order: padding
        enters no conv, a document starts from zeros, a row's first document continues from
        its carried window and its last one's inputs are its final window. The tokens are cut
        into segments as one expert that every valid token is routed to (the routed conv's
        machinery: :class:`ExpertSegments`, :func:`segment_causal_conv`).

        values: (n, channels); window: (batch, K-1, channels) or None. Returns the conv output
        (n, channels) (padding tokens get values that nothing reads) and the final window
        (batch, K-1, channels) if ``return_states`` (else None).
        """
        n, device = values.shape[0], values.device

        def token_segments():  # the same for every layer of the forward
            tokens = dispatch_by_expert(torch.zeros(n, 1, dtype=torch.long, device=device), valid, 1, fused_ops)
            return tokens, ExpertSegments.build(tokens, layout, 1, every_pair=True)

        tokens, segments = layout.shared(("token segments", device), token_segments)
        initial = None if window is None else segments.scatter_states(window[:, None])
        rows, final = segment_causal_conv(
            values.index_select(0, tokens.token), self.shared_conv_weight[None], self.shared_conv_bias[None],
            torch.zeros_like(tokens.token), segments.cu_seqlens, segments.segment, initial, return_states,
            uniform=segments.uniform,
        )
        out = rows.new_zeros(n, rows.shape[1]).index_copy(0, tokens.token, rows)  # tokens.token: a permutation
        return out, (None if final is None else segments.gather_states(final)[:, 0])

    @property
    def _rows_hold_every_pair(self) -> bool:  # the conv and scan rows: "all", or k = E
        return not self.routed or self.experts_per_token == self.n_experts

    def _scan_rows(self, assign: ExpertDispatch, valid, n: int, layout: SequenceLayout,
                   fused_ops: str) -> tuple[ExpertDispatch, torch.Tensor | None]:
        """The rows the experts' convs and scans run on, and where the routed rows are among them.

        Routed (or k = E, where every expert is chosen anyway): the routed rows themselves
        (None). ``"all"`` with k < E: every valid token for every expert, sorted the same way,
        and (n*k,) the position of each routed row among them."""
        E = self.n_experts
        if self.routed or self.experts_per_token == E:  # k = E: every pair is routed anyway
            return assign, None
        device = assign.token.device
        every = layout.shared(("every pair", E, device), lambda: dispatch_by_expert(
            torch.arange(E, device=device).expand(n, E), valid, E, fused_ops))  # the same for every layer
        return every, every.position[assign.token * E + assign.expert.clamp(max=E - 1)]

    def _mix(self, flat, rows: ExpertDispatch, segments: ExpertSegments, conv_state, ssm_state, return_states,
             policy: ExecutionPolicy, shared: SequenceFeatures):
        """Projection -> conv -> SiLU -> dt -> scan -> gated norm over the M dispatched rows.

        Args:
            flat: (n, d_model) tokens; rows / segments: the M rows and their segments.
            conv_state, ssm_state: (batch, E, ...) carried states (per-expert windows) or None.
            shared: the tokens' sequence features (section 7 switches; empty by default).
        Returns:
            normed (M, P) fp32 (fp64 for fp64 layers), before the router gate; and the new
            (per-expert conv windows or None, ssm_state) if ``return_states`` else None.
        """
        expert = rows.expert.clamp(max=self.n_experts - 1)  # padding rows borrow expert E-1's parameters
        z, xBC, dt_raw = self._project_rows(flat, shared.conv_u, rows, expert, policy, segments.uniform)
        conv_final = None
        if self.conv_weight is not None:
            activated, conv_final = segment_conv_silu(
                xBC, self.conv_weight, self.conv_bias, expert, segments.cu_seqlens, segments.segment,
                segments.scatter_states(conv_state), return_states, uniform=segments.uniform, impl=policy.fused_ops,
            )
        else:
            activated = F.silu(xBC)
        shared_bc = None if shared.bc is None else shared.bc.index_select(0, rows.token)
        x, B, C = self._features(activated, shared_bc)
        # Step sizes and decays in fp32 (fp64 when the layer runs in fp64, as the identity tests do).
        params = self._expert_rows(expert, compute_dtype_for(flat), uniform=segments.uniform)
        y_folded, scale, ssm_final = self._scan(x, B, C, step_size(dt_raw, params.dt_bias), params, segments,
                                                ssm_state, return_states, policy)
        normed = read_out(y_folded.reshape(x.shape), scale, x, params.skip_D, z, params.z_bias, params.norm_weight,
                          self.eps, impl=policy.fused_ops)
        if not return_states:
            return normed, None
        return normed, (segments.gather_states(conv_final), segments.gather_states(ssm_final))

    def _project_rows(self, flat, conv_u, rows: ExpertDispatch, expert: torch.Tensor, policy: ExecutionPolicy,
                      in_order: bool):
        """z (M, P), the conv features xBC (M, C) and dt_raw (M, 1) of the rows: all projected
        from u, or, with the shared conv (``conv_u`` (n, d_model) given), xBC from conv(u)."""
        if conv_u is None:
            return self._split(self._project(flat, self.in_proj, rows, expert, policy, in_order))
        P, w = self.head_dim, self.in_proj
        z_dt = self._project(flat, torch.cat([w[:, :P], w[:, -1:]], dim=1), rows, expert, policy, in_order)
        xBC = self._project(conv_u, w[:, P:-1].contiguous(), rows, expert, policy, in_order)
        z, dt_raw = z_dt.split([P, 1], dim=-1)
        return z, xBC, dt_raw

    def _project(self, flat: torch.Tensor, weight: torch.Tensor, rows: ExpertDispatch, expert: torch.Tensor,
                 policy: ExecutionPolicy, in_order: bool):
        """(M, F') projections of the rows by ``weight`` (E, F', d_model). When the rows hold
        every (token, expert) pair (``"all"``, or k = E) one dense matmul over all experts does
        the same FLOPs as the grouped one and its rows are picked afterwards: the (M, F')
        outputs are gathered instead of the wider (M, d_model) inputs, and the backward adds
        no two rows into one address. ``in_order`` (uniform segments): the rows are E blocks of
        all n tokens in order, so the pick is a transpose, a copy each way instead of a gather
        and a scatter-add."""
        E = self.n_experts
        w_in = _cast(weight, flat)
        if not self._rows_hold_every_pair:
            return grouped_linear(gather_token_rows(flat, rows, policy.fused_ops), w_in, rows.offsets,
                                  impl=policy.expert_matmul, every_row_routed=rows.every_row_routed)
        every = torch.matmul(flat, w_in.reshape(-1, w_in.shape[-1]).T)  # (n, E*F)
        if in_order:
            return every.view(flat.shape[0], E, -1).transpose(0, 1).reshape(-1, w_in.shape[1])
        return every.view(-1, w_in.shape[1]).index_select(0, rows.token * E + expert)

    def _scan(self, x, B, C, dt, params: ExpertRows, segments: ExpertSegments, ssm_state, return_states,
              policy: ExecutionPolicy):
        """The scan of every row's expert over its segment: y folded (below), the fold's scale
        and the final states (the read-out unfolds y and adds D x).

        One scan "head" for all experts: the scan takes one A per head, so each row's decay
        rate a_e = -A_e (at least FOLD_FLOOR) is folded into its step. With dt' = a_e dt, A' = -1,
        h'_0 = a_e h_0:
            h'_t = exp(-dt'_t) h'_{t-1} + dt'_t B_t x_t^T = a_e h_t   (h_t: the true state),
        since exp(-dt'_t) = exp(dt_t A_e) and the input term is a_e times the true one; so
        y_t = C_t h'_t / a_e + D_e x_t and the final state is h'_T / a_e. The division is of
        the output (in the read-out, in fp32), so the scan's inputs stay unrounded.

        x, B, C: (M, P or N); dt: (M,) in the compute dtype. Returns the folded y (M * P values
        in the scan's layout and dtype), the scale a_e (M,) and the final states (S, N, P) or None.
        """
        cdt = dt.dtype
        scale = fold_scale(params.decay_rate)  # (M,)
        # Only states carried in or out need the per-segment scale (training has neither).
        segment_scale = None
        if ssm_state is not None or return_states:
            segment_scale = fold_scale(torch.exp(self.A_log).to(cdt)).index_select(0, segments.expert_of_segment)
        initial = segments.scatter_states(ssm_state)
        if initial is not None:
            initial = (initial.to(cdt) * segment_scale[:, None, None])[:, None]  # (S, 1, N, P)
        scan_dtype = scan_input_dtype(x)
        # (M, ...) -> (S, T, 1, ...): uniform segments, a plain batch; else (1, M, 1, ...) with cu_seqlens.
        batch_of = (segments.cu_seqlens.numel() - 1, segments.max_length) if segments.uniform else (1, x.shape[0])
        one_head = lambda t: t.to(scan_dtype).view(*batch_of, 1, *t.shape[1:])  # noqa: E731
        if segments.uniform:
            packing = dict(cu_seqlens=None, max_seqlen=None)
        else:
            packing = dict(cu_seqlens=segments.cu_seqlens, max_seqlen=segments.max_length if tracing() else None)
        y, final = mosse_scan(
            one_head(x), (dt * scale).view(*batch_of, 1), torch.full((1,), -1.0, dtype=cdt, device=x.device),
            one_head(B), one_head(C), None, initial, return_states,
            impl=policy.scan_impl, chunk_size=policy.chunk_size, fast_path_options=policy.triton_options(), **packing,
        )
        if final is not None:
            final = final[:, 0] / segment_scale[:, None, None]
        return y, scale, final

    # ----------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self, config) -> None:
        """Mamba-2-style init: dt bias = softplus^-1 of a log-uniform step in [dt_min, dt_max];
        A = -uniform(A_init_range) stored as A_log; D = 1; z bias 0; residual output scaled by depth.

        Every write goes through ``transformers.initialization``, whose functions skip a tensor
        that ``from_pretrained`` already loaded: transformers 5.0-5.12 re-run this after loading
        and only guard those calls, so a plain ``.fill_()`` / ``.copy_()`` here would silently
        overwrite loaded weights."""
        std = config.initializer_range
        E = self.n_experts
        conv_bound = 1 / math.sqrt(self.conv_kernel)
        init.normal_(self.in_proj, std=std)
        if self.conv_weight is not None:
            init.uniform_(self.conv_weight, -conv_bound, conv_bound)
            init.zeros_(self.conv_bias)
        dt = torch.exp(torch.rand(E) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min))
        dt = dt.clamp(min=config.dt_init_floor)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        lo, hi = config.A_init_range
        init.copy_(self.A_log, torch.log(torch.empty(E).uniform_(lo, hi)))
        init.ones_(self.D)
        init.ones_(self.norm_weight)
        if self.z_bias is not None:
            init.zeros_(self.z_bias)
        out_std = std / math.sqrt(2 * config.n_layers) if config.rescale_residual else std
        init.normal_(self.out_proj, std=out_std)
        if self.router is not None:
            init.normal_(self.router.weight, std=std)
        if self.shared_conv_weight is not None:
            init.uniform_(self.shared_conv_weight, -conv_bound, conv_bound)
            init.zeros_(self.shared_conv_bias)
        if self.bc_proj is not None:
            init.normal_(self.bc_proj, std=std)
