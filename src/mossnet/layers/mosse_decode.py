"""The one-token step of the MoSSE layer (``MoSSE.forward(..., decode=True)``), spec section 5.

:class:`MoSSEDecodeStep` is mixed into :class:`~mossnet.layers.mosse.MoSSE` and reads its
parameters and helpers; it holds only what differs from the sequence forward: the cached conv
windows and SSM states are read and advanced in place for the k routed experts (every expert's
with ``state_update="all"``), through the same step-size, feature and read-out functions as the
forward (tests check step == forward). On CUDA, inference of the default layer takes one fused
Triton kernel from the projections to the gated outputs instead (the policy's ``fused_ops``;
``tests/layers/test_fused_layers.py`` checks it against this PyTorch step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..execution import ExecutionPolicy
from ..ops.conv import conv_at_rows
from ..ops.fused import choose, why_triton_cannot_run
from ..ops.moe.gathered_linear import gathered_linear
from ..ops.mosse.naive import compute_dtype_for, ssm_step
from .mosse_rules import SequenceFeatures, step_size


class MoSSEDecodeStep:
    """The decode methods of :class:`~mossnet.layers.mosse.MoSSE` (a mixin: no state of its own)."""

    def _decode_token(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                      policy: ExecutionPolicy) -> torch.Tensor:
        """One generated token (``forward(..., decode=True)``), touching only the routed
        experts' weights and states (every expert's with ``state_update="all"``).

        Args:
            u: (batch, d_model). conv_state: (batch, *conv_window_shape(config)), ssm_state:
                (batch, E, N, P); both updated in place (a static cache, so the step can be
                captured in a CUDA graph).
        Returns:
            o: (batch, d_model).
        """
        batch = u.shape[0]
        E, P, N = self.n_experts, self.head_dim, self.state_dim
        routing = self.route(u, None, policy)
        if self.routed:
            idx, gates = routing.top_idx, routing.top_gates  # (batch, k)
        else:  # every expert's state moves; the router still gates the outputs
            idx = torch.arange(E, device=u.device).expand(batch, E)
            gates = routing.dense_gates(E)
        chosen = idx.shape[1]
        expert_window, sequence_window = self._split_windows(conv_state)
        shared = self._decode_sequence_features(u, sequence_window)
        z, xBC, dt_raw = self._decode_project(u, shared.conv_u, idx, policy.fused_ops)
        if choose("the fused MoSSE decode step", policy.fused_ops,
                  lambda: self._why_no_fused_step(u, conv_state, ssm_state), u.is_cuda):
            from ..ops.mosse.triton.decode_step import decode_step_triton

            yhat = decode_step_triton(xBC, z, dt_raw, idx, gates, expert_window, ssm_state, self.conv_weight,
                                      self.conv_bias, self.dt_bias, self.A_log, self.D, self.norm_weight, self.z_bias,
                                      self.eps)
            return gathered_linear(yhat.to(self.out_proj.dtype), self.out_proj, idx, policy.fused_ops).sum(1)
        params = self._expert_rows(idx.reshape(-1), compute_dtype_for(u)).unflatten(batch, chosen)
        if self.conv_weight is not None:
            xBC = self._decode_expert_conv(xBC, expert_window, idx)
        shared_bc = None if shared.bc is None else shared.bc[:, None].expand(-1, chosen, -1)
        x, B, C = self._features(F.silu(xBC), shared_bc)

        gather = lambda state, size: state.gather(1, idx[:, :, None, None].expand(-1, -1, *size))  # noqa: E731
        dt = step_size(dt_raw, params.dt_bias)
        y, new_state = ssm_step(gather(ssm_state, (N, P)), x, dt, -params.decay_rate, B, C, params.skip_D)
        ssm_state.scatter_(1, idx[:, :, None, None].expand(-1, -1, N, P), new_state.to(ssm_state.dtype))

        yhat = self._read_out(y, z, params) * gates[..., None]
        return gathered_linear(yhat.to(self.out_proj.dtype), self.out_proj, idx, policy.fused_ops).sum(1)

    def _why_no_fused_step(self, u: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> str | None:
        """None when the fused step (``ops/mosse/triton/decode_step.py``) computes this step;
        else why the PyTorch step below does."""
        reason = why_triton_cannot_run(u)
        if reason is not None:
            return reason
        if torch.is_grad_enabled() and any(p.requires_grad for p in (self.in_proj, self.D)):
            return "gradients are on (the fused step is inference-only)"
        if self.shared_conv or self.share_bc or self.conv_weight is None or self.conv_bias is None:
            return "a section-7 switch or a layer without its conv bias (the fused step covers the default layer)"
        if self.conv_kernel < 2:
            return "a conv of one tap (no window to carry)"
        if not (conv_state.is_contiguous() and ssm_state.is_contiguous()):
            return "the cache's states are not contiguous"
        if max(self.head_dim, self.state_dim) > 256:
            return f"P or N over 256 (P={self.head_dim}, N={self.state_dim})"
        return None

    def _decode_project(self, u: torch.Tensor, conv_u: torch.Tensor | None, idx: torch.Tensor, fused: str):
        """z (batch, k, P), xBC (batch, k, C), dt_raw (batch, k, 1) of the chosen experts
        ``idx`` (batch, k); xBC from ``conv_u`` (batch, d_model) with the shared conv. Only the
        chosen experts' projections are read (in place: on the CPU, and on CUDA with ``fused``,
        the policy's fused_ops)."""
        chosen = idx.shape[1]
        rows = lambda t: t.to(self.in_proj.dtype)[:, None, :].expand(-1, chosen, -1)  # noqa: E731
        if conv_u is None:
            return self._split(gathered_linear(rows(u), self.in_proj, idx, fused))
        P, w = self.head_dim, self.in_proj
        z, dt_raw = gathered_linear(rows(u), torch.cat([w[:, :P], w[:, -1:]], dim=1), idx, fused).split([P, 1], dim=-1)
        return z, gathered_linear(rows(conv_u), w[:, P:-1], idx, fused), dt_raw

    def _decode_expert_conv(self, xBC: torch.Tensor, window: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The per-expert conv of one token: xBC (batch, k, C) of the chosen experts ``idx``
        (batch, k) after their cached windows (batch, E, K-1, C), which are advanced in place.
        Returns (batch, k, C)."""
        batch, chosen = idx.shape
        K, width = self.conv_kernel, self.feature_dim
        slots = idx[:, :, None, None].expand(-1, -1, K - 1, width)
        full = torch.cat([window.gather(1, slots), xBC[:, :, None, :].to(window.dtype)], dim=2)  # (batch, k, K, C)
        window.scatter_(1, slots, full[:, :, 1:])
        # The conv of the forward, at the newest row of each (token, expert) window.
        newest = torch.arange(1, batch * chosen + 1, device=idx.device) * K - 1
        out = conv_at_rows(full.reshape(batch * chosen * K, -1), self.conv_weight, self.conv_bias, idx.reshape(-1),
                           newest)
        return out.view(batch, chosen, -1)

    def _decode_sequence_features(self, u: torch.Tensor, window: torch.Tensor | None) -> SequenceFeatures:
        """:meth:`_sequence_features` of one token per row: u (batch, d_model) after the cached
        window (batch, K-1, channels), which is advanced in place."""
        if self.shared_conv_weight is None:
            return SequenceFeatures()
        batch, K = u.shape[0], self.conv_kernel
        values = self._sequence_conv_input(u)
        full = torch.cat([window, values[:, None, :].to(window.dtype)], dim=1)  # (batch, K, channels)
        window.copy_(full[:, 1:])
        newest = torch.arange(1, batch + 1, device=u.device) * K - 1
        conv_out = conv_at_rows(full.reshape(batch * K, -1), self.shared_conv_weight[None], self.shared_conv_bias[None],
                                torch.zeros(batch, dtype=torch.long, device=u.device), newest)
        return self._after_sequence_conv(conv_out)
