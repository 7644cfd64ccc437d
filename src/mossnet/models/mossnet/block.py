"""One MossNet layer (spec section 1): ``h += MoSSE(RMSNorm(h)); h += MoEMLP(RMSNorm(h))``; with
``mlp_experts=0`` (spec section 7) only ``h += MoSSE(RMSNorm(h))``."""

from __future__ import annotations

from torch import nn

from ...execution import ExecutionPolicy
from ...layers.moe_mlp import MoEMLP
from ...layers.mosse import MoSSE
from ...layers.norm import RMSNorm
from ...layers.sequence_layout import SequenceLayout
from .configuration_mossnet import MossNetConfig

try:  # transformers >= 4.52: re-entrant checkpointing handled for us
    from transformers.modeling_layers import GradientCheckpointingLayer as _BlockBase
except ImportError:  # pragma: no cover
    _BlockBase = nn.Module


class MossNetBlock(_BlockBase):
    """Pre-norm residual block: time mixing (MoSSE) then channel mixing (MoE-MLP). With
    ``mlp_experts=0`` there is no channel mixing: ``mlp_norm`` and ``mlp`` are None."""

    def __init__(self, config: MossNetConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mixer = MoSSE(config, layer_idx)
        self.mlp_norm = self.mlp = None
        if config.mlp_experts > 0:
            self.mlp_norm = RMSNorm(config.d_model, config.rms_norm_eps)
            self.mlp = MoEMLP(
                config.d_model, config.mlp_hidden_dim, config.mlp_experts, config.mlp_top_k,
                config.router_renormalize, config.mlp_shared_expert,
            )

    def forward(self, h, layout: SequenceLayout | None = None, conv_state=None, ssm_state=None, return_states=False,
                decode=False, policy: ExecutionPolicy | None = None):
        """h: (batch, T, d_model) fp32 residual. Returns (h, mixer report, mlp report, new states).

        ``decode=True``: one generated token per row (batch, 1, d_model); the states are
        advanced in place and the reports and states come back as None. Every submodule is
        entered through its ``forward`` as well, so wrappers that only hook ``forward`` (PEFT,
        FSDP) see decode. ``policy``: how to execute (None: defaults).
        """
        if decode:
            h = h + self.mixer(self.mixer_norm(h), None, conv_state, ssm_state, decode=True, policy=policy)[0].float()
            if self.mlp is None:
                return h, None, None, None
            channel, _ = self.mlp(self.mlp_norm(h)[:, 0], decode=True, policy=policy)
            return h + channel[:, None].float(), None, None, None
        mixed, mixer_report, states = self.mixer(self.mixer_norm(h), layout, conv_state, ssm_state, return_states,
                                                 policy=policy)
        h = h + mixed.float()
        if self.mlp is None:
            return h, mixer_report, None, states
        batch, T, d_model = h.shape
        valid = None if layout is None or layout.valid is None else layout.valid.reshape(-1)
        channel, mlp_report = self.mlp(self.mlp_norm(h).reshape(batch * T, d_model), valid, policy=policy)
        h = h + channel.view(batch, T, d_model).float()
        return h, mixer_report, mlp_report, states
