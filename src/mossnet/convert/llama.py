"""A Llama-family teacher: what is refused, and the exact part of the mapping (spec section 8).

A teacher (transformers ``LlamaForCausalLM``) with H query heads and G key/value heads of width
d_h becomes a MossNet with ``ssm_experts = H``, ``ssm_head_dim = ssm_state_dim = d_h``, one dense
SwiGLU MLP per layer, and:

* expert h: C <- the q rows of head h, B <- the k rows of group kv(h) = h // (H / G), x <- the v
  rows of group kv(h) (transformers' ``repeat_kv`` order: query head h reads kv head h // n_rep),
  W_o^h <- the columns of ``o_proj`` that read head h;
* copied unchanged: the embedding, the LM head (tied or not), every RMSNorm (weight and eps), the
  MLP (gate and up stacked in the order :class:`~mossnet.layers.moe_mlp.SwiGLU` splits them).

Everything the teacher has no counterpart for (router, z, the d row, dt bias, A, D, conv, the
gated-norm weight) is set in :mod:`mossnet.convert.init`. Refusals come first, from the config
alone, so that a refused teacher writes nothing anywhere.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mossnet.errors import CheckpointError, ConfigError, MissingExtraError, OptionError, first_line

STATE_UPDATES = ("all", "routed")


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher lives: a transformers model directory, or a GGUF file (loaded and
    dequantized by transformers, which needs the ``gguf`` package)."""

    directory: Path
    gguf_file: str | None = None

    @classmethod
    def of(cls, path: str | os.PathLike) -> "TeacherSource":
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"teacher {path} does not exist")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise CheckpointError(f"teacher {path} is a file but not a .gguf file; pass a transformers "
                                      "model directory or a GGUF file")
            return cls(path.parent, path.name)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"teacher {path} has no config.json (expected a transformers LlamaForCausalLM "
                                  "directory or a .gguf file)")
        return cls(path)

    def kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def load_teacher_config(source: TeacherSource):
    """The teacher's transformers config (reads only metadata, even for a GGUF file)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise MissingExtraError("a GGUF teacher", "eval", "the gguf package")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.directory, **source.kwargs())
    except Exception as err:  # transformers raises many types for an unreadable config
        raise CheckpointError(f"cannot read the teacher's config from {source}: {first_line(err)}") from None


def load_teacher(source: TeacherSource):
    """The teacher ``LlamaForCausalLM`` in fp32, eval mode (GGUF weights dequantized)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32, **source.kwargs())
    except ImportError as err:
        raise CheckpointError(f"cannot load the teacher {source}: {first_line(err)}") from None
    except Exception as err:
        raise CheckpointError(f"cannot load the teacher {source}: {first_line(err)}") from None
    return model.eval()


def load_teacher_tokenizer(source: TeacherSource):
    """The teacher's tokenizer; conversion keeps it, so a teacher without one is refused."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.directory, **source.kwargs())
    except Exception as err:
        raise CheckpointError(f"the teacher {source} has no usable tokenizer ({first_line(err)}); the converted "
                              "model keeps the teacher's tokenizer, so one is needed") from None


def check_teacher_config(cfg) -> None:
    """Refuse, by name, a teacher whose attention or MLP the mapping cannot carry over.

    Raises ConfigError (one line) for: a non-Llama architecture, ``attention_bias``,
    ``mlp_bias``, an activation other than SiLU, sliding-window attention, ``pretraining_tp > 1``,
    or query heads that are not a multiple of the key/value heads."""
    model_type = getattr(cfg, "model_type", None)
    archs = getattr(cfg, "architectures", None) or []
    if model_type != "llama" or any(a != "LlamaForCausalLM" for a in archs):
        what = ", ".join(archs) or model_type or "unknown"
        _refuse(f"the teacher is not a Llama model (model_type {model_type!r}, architecture {what}); "
                "only LlamaForCausalLM is converted")
    if getattr(cfg, "attention_bias", False):
        _refuse("the teacher has attention_bias=true: the SSM experts' projections have no bias to take it")
    if getattr(cfg, "mlp_bias", False):
        _refuse("the teacher has mlp_bias=true: MossNet's SwiGLU has no biases")
    act = getattr(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        _refuse(f"the teacher's hidden_act is {act!r}: MossNet's MLP is SwiGLU (SiLU) only")
    layer_types = getattr(cfg, "layer_types", None) or []
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "use_sliding_window", False) or any(
            "sliding" in str(t) for t in layer_types):
        _refuse("the teacher uses sliding-window attention (sliding_window / layer_types): not converted")
    if (getattr(cfg, "pretraining_tp", 1) or 1) > 1:
        _refuse(f"the teacher has pretraining_tp={cfg.pretraining_tp} > 1 (sliced projections): not converted")
    H, G = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    if H % G:
        _refuse(f"the teacher's num_attention_heads ({H}) is not a multiple of num_key_value_heads ({G})")


def check_options(cfg, experts_per_token: int | None, state_update: str) -> int:
    """The number of experts per token k (default: all H heads); refuses k outside [1, H]."""
    H = cfg.num_attention_heads
    k = H if experts_per_token is None else experts_per_token
    if not 1 <= k <= H:
        raise OptionError(f"--experts-per-token must be between 1 and the teacher's {H} query heads, got {k}")
    if state_update not in STATE_UPDATES:
        raise OptionError(f"--state-update must be one of {STATE_UPDATES}, got {state_update!r}")
    return k


def head_dim_of(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def kv_group(h: int, n_heads: int, n_kv_heads: int) -> int:
    """kv(h) = h // (H / G): the key/value head that query head h reads (``repeat_kv`` order)."""
    return h // (n_heads // n_kv_heads)


def mossnet_config_for(cfg, experts_per_token: int, state_update: str):
    """The MossNetConfig of the converted model (shapes from the teacher, spec section 8)."""
    from mossnet import MossNetConfig

    d_h = head_dim_of(cfg)
    ids = {name: _token_id(getattr(cfg, name, None), cfg.vocab_size)
           for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    try:
        return MossNetConfig(
            vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, n_layers=cfg.num_hidden_layers,
            ssm_experts=cfg.num_attention_heads, ssm_top_k=experts_per_token,
            ssm_head_dim=d_h, ssm_state_dim=d_h, state_update=state_update, ssm_z_bias=True,
            mlp_experts=1, mlp_top_k=1, mlp_hidden_dim=cfg.intermediate_size,
            rms_norm_eps=float(cfg.rms_norm_eps), initializer_range=float(getattr(cfg, "initializer_range", 0.02)),
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)), **ids,
        )
    except ConfigError as err:
        raise ConfigError(f"the teacher's shapes give no valid MossNet: {err}") from None


def _token_id(value, vocab_size: int):
    """A special-token id the MossNet config accepts (ids outside the vocabulary are dropped)."""
    if isinstance(value, list):
        kept = [v for v in value if isinstance(v, int) and 0 <= v < vocab_size]
        return kept or None
    return value if isinstance(value, int) and 0 <= value < vocab_size else None


@torch.no_grad()
def copy_exact_parts(teacher, student) -> None:
    """Copy the embedding, LM head, norms and MLPs, and map q/k/v/o into the experts' C, B, x
    rows and W_o. The rows of ``in_proj`` that have no counterpart (z, d) are left alone."""
    cfg = teacher.config
    H, G = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    d_h = head_dim_of(cfg)
    student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
    if not student.config.tie_word_embeddings:
        student.lm_head.weight.copy_(teacher.lm_head.weight)
    student.model.norm_f.weight.copy_(teacher.model.norm.weight)
    for block, layer in zip(student.model.layers, teacher.model.layers):
        block.mixer_norm.weight.copy_(layer.input_layernorm.weight)
        block.mlp_norm.weight.copy_(layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        # SwiGLU.forward splits gate_up into (gate, up) halves: gate rows first.
        block.mlp.dense.gate_up.weight.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=0))
        block.mlp.dense.down.weight.copy_(mlp.down_proj.weight)
        map_attention_heads(layer.self_attn, block.mixer, H, G, d_h)


@torch.no_grad()
def map_attention_heads(attn, mixer, n_heads: int, n_kv_heads: int, d_h: int) -> None:
    """in_proj rows [z | x | B | C | d] of expert h <- [- | v_kv(h) | k_kv(h) | q_h | -];
    out_proj[h] <- o_proj[:, h d_h:(h+1) d_h]."""
    P, N = mixer.head_dim, mixer.state_dim
    assert P == N == d_h, (P, N, d_h)
    rows = lambda w, i: w[i * d_h:(i + 1) * d_h]  # noqa: E731  (head i's rows of a projection)
    for h in range(n_heads):
        g = kv_group(h, n_heads, n_kv_heads)
        w = mixer.in_proj[h]  # (2P + 2N + 1, D)
        w[P:2 * P] = rows(attn.v_proj.weight, g)
        w[2 * P:2 * P + N] = rows(attn.k_proj.weight, g)
        w[2 * P + N:2 * P + 2 * N] = rows(attn.q_proj.weight, h)
        mixer.out_proj[h] = attn.o_proj.weight[:, h * d_h:(h + 1) * d_h]


def _refuse(message: str):
    raise ConfigError(f"cannot convert: {message}")

