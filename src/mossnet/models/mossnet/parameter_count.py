"""Total and *active* (per-token) parameter counts, and recurrent-state bytes.

A token runs k of E experts, so an expert weight counts k/E towards the active parameters.
With ``state_update="all"`` every expert's projection, conv and scan run on every token;
only the output projection is routed. The parts that every token uses whatever the routing
(spec section 7's shared conv and shared B/C projection, norms, routers, embeddings) count in
full.
"""

from __future__ import annotations

import math

from torch import nn

from ...layers.mosse import conv_window_shape

# Per-expert tensors of the MoSSE layer (leading dim E), by parameter name.
_MIXER_EXPERT_PARAMS = frozenset(
    ("in_proj", "conv_weight", "conv_bias", "dt_bias", "A_log", "D", "norm_weight", "out_proj", "z_bias"))


def _active_fraction(name: str, config) -> float:
    leaf = name.rsplit(".", 1)[-1]
    if ".mixer." in name and leaf in _MIXER_EXPERT_PARAMS and config.ssm_experts > 1:
        if config.state_update == "routed" or leaf == "out_proj":
            return config.ssm_top_k / config.ssm_experts
    if (".mlp.gate_up" in name or ".mlp.down" in name) and config.mlp_experts > 1:
        return config.mlp_top_k / config.mlp_experts
    return 1.0


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{"total", "active", "embedding"} parameter counts of a MossNet model (tied weights once)."""
    config = model.config
    total = active = 0
    for name, p in model.named_parameters():  # named_parameters() skips the tied duplicate
        total += p.numel()
        active += round(p.numel() * _active_fraction(name, config))
    embedding = config.vocab_size * config.d_model
    return {"total": total, "active": active, "embedding": embedding}


def recurrent_state_bytes_per_layer(config, bytes_per_element: int = 4) -> int:
    """Bytes of SSM state + conv windows per layer and sequence (what decode carries: the
    cache's ``ssm_states[l]`` and ``conv_states[l]`` for one sequence)."""
    E, P, N = config.ssm_experts, config.ssm_head_dim, config.ssm_state_dim
    return (E * N * P + math.prod(conv_window_shape(config))) * bytes_per_element
