"""Total and *active* (per-token) parameter counts, and recurrent-state bytes.

A token runs k of E experts, so an expert weight counts k/E towards the active parameters.
With ``state_update="all"`` every expert's projection, conv and scan run on every token;
only the output projection is routed.
"""

from __future__ import annotations

from torch import nn

# Per-expert tensors of the MoSSE layer (leading dim E).
_MIXER_EXPERT_PARAMS = ("in_proj", "conv_weight", "conv_bias", "dt_bias", "A_log", "mixer.D", "norm_weight", "out_proj",
                        "z_bias")


def _active_fraction(name: str, config) -> float:
    if ".mixer." in name and "router" not in name and config.ssm_experts > 1:
        if any(key in name for key in _MIXER_EXPERT_PARAMS):
            if config.state_update == "routed" or "out_proj" in name:
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
    """Bytes of SSM state + conv window per layer and sequence (what decode carries)."""
    E, P, N, K = config.ssm_experts, config.ssm_head_dim, config.ssm_state_dim, config.conv_kernel
    return E * (N * P + (K - 1) * (P + 2 * N)) * bytes_per_element
