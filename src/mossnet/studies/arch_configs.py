"""The architectures a study compares, built at matched *active* parameters per token.

Every architecture is derived from one reference MossNet config (a preset plus overrides) and
keeps its vocabulary, width ``d_model`` and depth ``n_layers``:

=============  ==============================================================================
name           what it is
=============  ==============================================================================
mossnet        the reference: routed SSM experts (E, top-k, head width P) and a routed MoE MLP
single_head    the paper's "single attention head": ``ssm_experts=1`` with
               ``ssm_head_dim = k * P`` (the same active value width, so heads are compared,
               not widths) and a dense SwiGLU MLP whose width is solved to match the active
               parameters (Mamba-like)
single_head_moe  the single-head SSM above with MossNet's MoE MLP (expert width solved to match
               the active parameters). Not MoE-Mamba (Pioro et al., 2024: Mamba blocks
               interleaved with Switch MLPs): our block and our top-k MoE MLP
llama          transformers' ``LlamaForCausalLM`` (SDPA attention), the 8/3 MLP, depth solved
               (``mossnet.train.baselines``)
mamba2         transformers' ``Mamba2ForCausalLM`` (multi-head, one B/C group), ``expand``
               chosen to match, initializer_range 0.02 (``mossnet.train.baselines``)
=============  ==============================================================================

The MossNet variants are expressed as overrides of the reference config, so that the trainer
(``mossnet.train``) can build them from ``arch="mossnet"`` plus a ``model`` mapping; the two
transformers baselines are built by the trainer's own size matching. :func:`describe_arch`
reports, for any of them, total / active / embedding parameters and the recurrent state a
sequence carries per layer (fp32 bytes; for attention, the KV cache at the study's length).
"""

from __future__ import annotations

from typing import Any

ARCHS = ("mossnet", "single_head", "single_head_moe", "llama", "mamba2")
MOSSNET_VARIANTS = ("mossnet", "single_head", "single_head_moe")
LABELS = {
    "mossnet": "MossNet (routed SSM experts + MoE MLP)",
    "single_head": "single-head SSM (E=1, P=k*P, dense MLP)",
    "single_head_moe": "single-head SSM + MoE MLP (E=1, P=k*P)",
    "llama": "Transformer (Llama, 8/3 MLP, depth matched)",
    "mamba2": "Mamba-2 (transformers, init 0.02)",
}


def config_accepts(*keys: str) -> bool:
    """Whether this checkout's ``MossNetConfig`` has every field in ``keys`` (a config silently
    stores an unknown keyword, so a switch not built yet must be detected, not passed)."""
    from mossnet.train.baselines import mossnet_fields

    return set(keys) <= mossnet_fields()


def trainer_arch(arch: str) -> str:
    """The ``--arch`` of ``mossnet train`` that builds ``arch``."""
    if arch in MOSSNET_VARIANTS:
        return "mossnet"
    if arch in ("llama", "mamba2"):
        return arch
    raise ValueError(f"unknown study architecture {arch!r}; choose from {ARCHS}")


def captures(arch: str) -> bool:
    """Whether ``--cuda-graph`` applies to ``arch`` (a study or trainer architecture): not to
    transformers' Mamba-2, whose kernel-less path (no ``mamba_ssm`` here) is not written for
    capture, nor to the MQAR gate's ``attention`` model (dropout; cheap enough to run eagerly)."""
    return arch not in ("mamba2", "attention")


def reference_config(preset: str, vocab_size: int, overrides: dict[str, Any] | None = None):
    from mossnet import MossNetConfig

    kwargs = dict(overrides or {})
    kwargs["vocab_size"] = vocab_size
    return MossNetConfig.from_preset(preset, **kwargs)


def _meta(cls, config):
    import torch

    with torch.device("meta"):
        return cls(config)


def mossnet_active(config) -> int:
    from mossnet import MossNetForCausalLM
    from mossnet.models.parameter_count import active_parameters

    return active_parameters(_meta(MossNetForCausalLM, config))


def _solve_mlp_width(base, target_active: int) -> int:
    """The ``mlp_hidden_dim`` whose active parameter count is nearest ``target_active`` (active
    parameters are affine in it: measure two points, solve, round)."""
    def active(h: int) -> int:
        return mossnet_active(base.__class__(**{**base.to_dict(), "mlp_hidden_dim": h}))

    a8, a16 = active(8), active(16)
    per_unit = (a16 - a8) / 8
    exact = 8 + (target_active - a8) / per_unit
    return max(1, int(round(exact)))


def variant_overrides(arch: str, ref) -> dict[str, Any]:
    """Overrides of the reference MossNet config that make the MossNet variant ``arch``
    (empty for ``mossnet`` itself). The MLP width is solved so that active parameters match."""
    if arch == "mossnet":
        return {}
    if arch not in ("single_head", "single_head_moe"):
        raise ValueError(f"{arch!r} is not a MossNet variant")
    over: dict[str, Any] = dict(ssm_experts=1, ssm_top_k=1, ssm_head_dim=ref.ssm_top_k * ref.ssm_head_dim)
    if arch == "single_head":
        over.update(mlp_experts=1, mlp_top_k=1, mlp_shared_expert=False)
    base = ref.__class__(**{**ref.to_dict(), **over})
    over["mlp_hidden_dim"] = _solve_mlp_width(base, mossnet_active(ref))
    return over


def build_config(arch: str, ref, seq_len: int):
    """The model config of ``arch`` matched to the reference MossNet config ``ref``."""
    if arch in MOSSNET_VARIANTS:
        return ref.__class__(**{**ref.to_dict(), **variant_overrides(arch, ref)})
    from mossnet.train.baselines import baseline_config

    return baseline_config(arch, ref, seq_len=seq_len, target_active=mossnet_active(ref))


def model_class(arch: str):
    from mossnet.train.baselines import model_class as _cls

    return _cls(trainer_arch(arch))


def solve_state_dim(config, target_bytes: int) -> int:
    """The state dim N (>= 1) whose per-layer cache bytes come nearest ``target_bytes`` (the
    smaller N on a tie); every other field of ``config`` is kept."""
    from mossnet.models.parameter_count import state_bytes_per_layer

    def bytes_at(n: int) -> int:
        return state_bytes_per_layer(config.__class__(**{**config.to_dict(), "ssm_state_dim": n}))

    n = 1
    while bytes_at(n + 1) < target_bytes:  # bytes grow with N
        n += 1
    return n if abs(bytes_at(n) - target_bytes) <= abs(bytes_at(n + 1) - target_bytes) else n + 1


def describe_arch(arch: str, config, seq_len: int) -> dict[str, Any]:
    """Parameter counts (total / active / embedding / non-embedding) and state bytes per layer of ``arch``."""
    from mossnet.models.parameter_count import parameter_counts, state_bytes_per_layer

    return {
        **parameter_counts(_meta(model_class(arch), config)),
        "state_bytes_per_layer": state_bytes_per_layer(config, seq_len),
        "state_kind": "kv_cache" if arch == "llama" else "recurrent",
        "d_model": int(config.hidden_size),
        "n_layers": int(config.num_hidden_layers),
    }
