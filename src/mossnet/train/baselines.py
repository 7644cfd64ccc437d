"""Model construction for the trainer: MossNet, and size-matched Llama / Mamba-2 baselines.

A baseline keeps the reference MossNet's vocabulary and width (``d_model``) and is sized to the
same *active* parameter count per token (the parameters one token actually uses: the routers,
k of the E experts of each mixture, norms, embeddings):

* Llama: the standard SwiGLU MLP of 8/3 ``d_model`` (rounded to a multiple of 8), attention heads
  of width 64 (or ``d_model`` when smaller), and the *depth* (``num_hidden_layers``) whose count
  comes nearest the target. Solving the MLP width instead starved the MLP (1.34 d_model at the
  GPU study's size, where attention then took half of each layer);
* Mamba-2: ``head_dim`` and ``state_size`` follow MossNet's ``ssm_head_dim``/``ssm_state_dim``,
  one group, the reference's depth, the integer ``expand`` (``num_heads * head_dim = expand *
  d_model``) that comes closest to the target, and ``initializer_range`` 0.02 (transformers'
  Mamba-2 default, 0.1, draws every linear layer and the tied embedding five times wider than
  the usual 0.02).

Parameters are counted (``mossnet.models.parameter_count``) on the meta device, so building a
config never allocates weights.
"""

from __future__ import annotations

from typing import Any

import torch

from mossnet.models.parameter_count import active_parameters, total_parameters


def _meta_model(cls, config):
    with torch.device("meta"):
        return cls(config)


def mossnet_config(preset: str, vocab_size: int, overrides: dict[str, Any], eos_id: int | None = None,
                   bos_id: int | None = None):
    from mossnet import MossNetConfig

    check_model_keys(overrides, mossnet_fields(), "mossnet")
    kwargs = dict(overrides)
    kwargs.setdefault("vocab_size", vocab_size)
    for key, value in (("eos_token_id", eos_id), ("bos_token_id", bos_id)):
        if value is not None:
            kwargs.setdefault(key, value)
    return MossNetConfig.from_preset(preset, **kwargs)


def _reference_numbers(ref) -> tuple[int, int, int, int]:
    """(vocab, d_model, n_layers, active parameters) of a reference MossNet config."""
    from mossnet import MossNetForCausalLM

    model = _meta_model(MossNetForCausalLM, ref)
    return ref.vocab_size, ref.d_model, ref.n_layers, active_parameters(model)


MAMBA2_CHUNK = 64


def baseline_config(arch: str, ref, seq_len: int = 2048, target_active: int | None = None):
    """A transformers config for ``arch`` ("llama" | "mamba2") matched to MossNet config ``ref``
    (vocabulary, d_model, roughly the active parameter count; Mamba-2 also keeps n_layers). ``target_active``
    overrides the count to match (it defaults to the reference model's)."""
    if target_active is None:
        vocab, d, n_layers, target_active = _reference_numbers(ref)
    else:
        vocab, d, n_layers = ref.vocab_size, ref.d_model, ref.n_layers
    tie = bool(getattr(ref, "tie_word_embeddings", True))
    common = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, tie_word_embeddings=tie,
                  bos_token_id=getattr(ref, "bos_token_id", None), eos_token_id=getattr(ref, "eos_token_id", None),
                  pad_token_id=getattr(ref, "pad_token_id", None))
    if arch == "llama":
        return _llama_config(d, common, seq_len, target_active)
    if arch == "mamba2":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        head_dim = int(getattr(ref, "ssm_head_dim", 64))
        state = int(getattr(ref, "ssm_state_dim", 64))
        conv = int(getattr(ref, "conv_kernel", 4))

        # Chunk 64, not transformers' default 256: without mamba_ssm, Mamba-2 runs its pure
        # PyTorch SSD, which builds (chunk x chunk) blocks per head; 64 is ~1.8x faster there (CPU,
        # fwd+bwd) and the same function (tests/train/test_baselines.py).
        def make(expand: int):
            return Mamba2Config(num_heads=expand * d // head_dim, head_dim=head_dim, expand=expand,
                                state_size=state, n_groups=1, conv_kernel=conv, initializer_range=0.02,
                                chunk_size=min(MAMBA2_CHUNK, seq_len), **common)

        best = None
        for expand in range(1, 17):
            if (expand * d) % head_dim:
                continue
            cfg = make(expand)
            diff = abs(total_parameters(_meta_model(Mamba2ForCausalLM, cfg)) - target_active)
            if best is None or diff < best[0]:
                best = (diff, cfg)
        if best is None:
            raise ValueError(f"no integer expand makes expand * d_model ({d}) a multiple of head_dim {head_dim}")
        return best[1]
    raise ValueError(f"unknown baseline architecture {arch!r} (llama | mamba2)")


def llama_mlp_width(d_model: int) -> int:
    """The standard SwiGLU width, 8/3 ``d_model``, rounded to a multiple of 8."""
    return max(8, 8 * round(8 * d_model / 3 / 8))


def _llama_config(d: int, common: dict[str, Any], seq_len: int, target_active: int):
    """Llama at width ``d`` with the 8/3 MLP, its depth solved so that its parameter count
    (all active) comes nearest ``target_active``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    head_dim = min(64, d)
    heads = max(1, d // head_dim)
    common = {k: v for k, v in common.items() if k != "num_hidden_layers"}

    def make(layers: int):
        return LlamaConfig(intermediate_size=llama_mlp_width(d), num_attention_heads=heads, num_key_value_heads=heads,
                           head_dim=d // heads, num_hidden_layers=layers, max_position_embeddings=max(2048, seq_len),
                           **common)

    # parameters are affine in the depth: measure two points and solve
    p1 = total_parameters(_meta_model(LlamaForCausalLM, make(1)))
    p2 = total_parameters(_meta_model(LlamaForCausalLM, make(2)))
    layers = max(1, int(round(1 + (target_active - p1) / (p2 - p1))))
    return make(layers)


def model_class(arch: str):
    if arch == "mossnet":
        from mossnet import MossNetForCausalLM

        return MossNetForCausalLM
    if arch == "llama":
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM
    if arch == "mamba2":
        from transformers import Mamba2ForCausalLM

        return Mamba2ForCausalLM
    raise ValueError(f"unknown architecture {arch!r}")


def build_model_config(arch: str, preset: str, vocab_size: int, overrides: dict[str, Any], seq_len: int,
                       eos_id: int | None = None, bos_id: int | None = None):
    """The model config for a fresh run. For baselines, ``overrides`` are split: keys of the
    MossNet config shape the reference; any other key is set on the baseline config."""
    if arch == "mossnet":
        return mossnet_config(preset, vocab_size, overrides, eos_id, bos_id)
    from mossnet import MossNetConfig

    ref_fields = set(MossNetConfig().to_dict())
    ref_over = {k: v for k, v in overrides.items() if k in ref_fields}
    own_over = {k: v for k, v in overrides.items() if k not in ref_fields}
    ref = mossnet_config(preset, vocab_size, ref_over, eos_id, bos_id)
    cfg = baseline_config(arch, ref, seq_len=seq_len)
    check_model_keys(own_over, set(cfg.to_dict()), arch)
    for key, value in own_over.items():
        setattr(cfg, key, value)
    return cfg


def validate_model_overrides(arch: str, overrides: dict[str, Any]) -> None:
    """Refuse unknown ``model.KEY`` overrides for ``arch`` before any work starts."""
    known = mossnet_fields()
    if arch != "mossnet":
        from transformers import LlamaConfig, Mamba2Config

        known |= set((LlamaConfig if arch == "llama" else Mamba2Config)().to_dict())
    check_model_keys(overrides, known, arch)


def mossnet_fields() -> set[str]:
    """The keys a ``model.KEY=VALUE`` override may set on a MossNet config."""
    import inspect

    from mossnet import MossNetConfig

    own = set(inspect.signature(MossNetConfig.__init__).parameters) - {"self", "kwargs"}
    return own | set(MossNetConfig().to_dict())


def check_model_keys(overrides: dict[str, Any], known: set[str], arch: str) -> None:
    """Refuse a model override the config does not have (a typo would otherwise be stored in
    config.json and silently ignored), suggesting the nearest known key."""
    import difflib

    from mossnet.errors import ConfigError

    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean model.{close[0]}?)" if close else ""
            raise ConfigError(f"model.{key} is not a field of the {arch} model config{hint}")

