"""How big a model is, for every architecture MossNet trains or compares against: total and
*active* (per-token) parameters, the embedding's share, and the state one sequence carries
while decoding. The trainer, the baselines' size matching, the studies, the benchmarks and
the model card all count here, so that two reports of one model never disagree.

Architectures, by ``config.model_type``:

* ``mossnet`` (the single-head SSM and MoE-Mamba study variants are MossNet configs too): a
  token runs k of E experts, so an expert weight counts k/E towards the active parameters.
  With ``state_update="all"`` every expert's projection, conv and scan run on every token;
  only the output projection is routed. The parts every token uses whatever the routing (the
  shared conv and shared B/C projection of spec section 7, norms, routers, embeddings) count in
  full. Decode state: every expert's SSM state plus the conv windows the cache holds.
* ``llama``: dense (active = total); decode state is the KV cache, which grows with the length.
* ``mamba2``: dense; decode state is the SSM state and conv window of every head.

Any other model is counted as dense; its state bytes are unknown (ValueError).

Example (on the meta device nothing is allocated):

>>> import torch
>>> from mossnet import MossNetConfig, MossNetForCausalLM
>>> config = MossNetConfig.from_preset("tiny")
>>> with torch.device("meta"):
...     model = MossNetForCausalLM(config)
>>> counts = parameter_counts(model)
>>> counts["active"] < counts["total"], counts["embedding"] == config.vocab_size * config.d_model
(True, True)
>>> state_bytes_per_layer(config) == state_bytes_per_layer(config, seq_len=4096)  # constant in length
True
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # counting needs no torch import of its own: callers hold the model
    from torch import nn

# Per-expert tensors of the MoSSE layer (leading dim E), by parameter name: matched exactly, so
# that the shared conv's `shared_conv_weight` is not taken for the experts' `conv_weight`.
_MIXER_EXPERT_PARAMS = frozenset(
    ("in_proj", "conv_weight", "conv_bias", "dt_bias", "A_log", "D", "norm_weight", "out_proj", "z_bias"))


def total_parameters(model: nn.Module) -> int:
    """Every parameter once (``parameters()`` lists a tied weight once)."""
    return sum(p.numel() for p in model.parameters())


def embedding_parameters(model: nn.Module) -> int:
    """The input embedding's parameters (0 for a model without ``get_input_embeddings``)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return emb.weight.numel() if emb is not None else 0


def active_parameters(model: nn.Module) -> int:
    """Parameters one token uses: MossNet counts k/E of each expert weight (see the module
    docstring); every other architecture is dense, so all of its parameters."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "mossnet":
        return total_parameters(model)
    return sum(round(p.numel() * _mossnet_active_fraction(name, config)) for name, p in model.named_parameters())


def _mossnet_active_fraction(name: str, config) -> float:
    """The share of parameter ``name`` that one token of a MossNet model uses."""
    leaf = name.rsplit(".", 1)[-1]
    if ".mixer." in name and leaf in _MIXER_EXPERT_PARAMS and config.ssm_experts > 1:
        if config.state_update == "routed" or leaf == "out_proj":
            return config.ssm_top_k / config.ssm_experts
    if (".mlp.gate_up" in name or ".mlp.down" in name) and config.mlp_experts > 1:
        return config.mlp_top_k / config.mlp_experts
    return 1.0


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``{"total", "active", "embedding", "non_embedding"}`` parameter counts of ``model``."""
    total, embedding = total_parameters(model), embedding_parameters(model)
    return {"total": total, "active": active_parameters(model), "embedding": embedding,
            "non_embedding": total - embedding}


def state_bytes_per_layer(config, seq_len: int = 0, bytes_per_element: int = 4) -> int:
    """Bytes one sequence carries per layer while decoding, after ``seq_len`` tokens (only the
    KV cache of attention depends on it): SSM states plus conv windows for MossNet (all E
    experts') and Mamba-2, keys plus values for Llama. Raises ValueError for another model type."""
    kind = getattr(config, "model_type", None)
    if kind == "mossnet":
        from mossnet.layers.mosse_rules import conv_window_shape  # the cache's own layout of the windows

        E, P, N = config.ssm_experts, config.ssm_head_dim, config.ssm_state_dim
        return (E * N * P + math.prod(conv_window_shape(config))) * bytes_per_element
    if kind == "mamba2":
        inner = config.num_heads * config.head_dim
        conv_channels = inner + 2 * config.n_groups * config.state_size
        ssm = config.num_heads * config.head_dim * config.state_size
        return (ssm + (config.conv_kernel - 1) * conv_channels) * bytes_per_element
    if kind == "llama":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * config.num_key_value_heads * head_dim * seq_len * bytes_per_element
    raise ValueError(f"no decode-state rule for model type {kind!r} (mossnet, llama or mamba2)")
