"""A small causal attention LM whose every design choice is a switch: the MQAR gate's model.

Why our own: the MQAR gate starts from Zoology's attention model (Arora et al., 2023: learned
absolute positions, LayerNorm, biased projections, dropout 0.1 on the embeddings and the
attention weights, one head, no MLP) and moves one factor at a time toward our Llama baseline
(RoPE, RMSNorm, no biases, no dropout, a SwiGLU MLP). No library model has every factor as a
switch (transformers' GPT-2 always has its GELU MLP, Llama always RoPE and its MLP), so the
ladder is one model with switches; ``tests/studies/test_attention_lm.py`` checks that its
Llama-like setting computes exactly what ``transformers.LlamaForCausalLM`` computes.

Block (pre-norm)::

    h = h + attention(norm1(h))
    h = h + state_mixer(norm2(h))     # "identity": Zoology's Identity state mixer (h + norm2(h));
                                      # "swiglu": down(silu(gate(x)) * up(x)); "none": no branch
    logits = norm_f(h) @ embedding.T  (tied)

Zoology's ``TransformerBlock`` with ``state_mixer=Identity`` hands ``norm2(residual)`` to the next
block, which adds it to the residual stream: that is the "identity" branch above.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
STATE_MIXERS = ("identity", "none", "swiglu")


@dataclass(frozen=True)
class AttentionLMConfig:
    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    heads: int = 1
    positions: str = "learned"
    max_positions: int = 256
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    bias: bool = True
    dropout: float = 0.1  # on the embeddings and on the attention weights (Zoology's places)
    state_mixer: str = "identity"
    mlp_hidden: int = 0  # SwiGLU width (state_mixer="swiglu")
    rope_theta: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS or self.norm not in NORMS or self.state_mixer not in STATE_MIXERS:
            raise ValueError(f"positions in {POSITIONS}, norm in {NORMS}, state_mixer in {STATE_MIXERS}; "
                             f"got {self.positions!r}, {self.norm!r}, {self.state_mixer!r}")
        if self.d_model % self.heads or (self.d_model // self.heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.heads} heads of even width")
        if self.state_mixer == "swiglu" and self.mlp_hidden < 1:
            raise ValueError("state_mixer='swiglu' needs mlp_hidden >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttentionLMOutput:
    logits: torch.Tensor  # (batch, T, vocab)
    aux_loss: torch.Tensor | None = None


def _norm(config: AttentionLMConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.d_model, eps=config.norm_eps)
    return nn.RMSNorm(config.d_model, eps=config.norm_eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(T: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, head_dim) cos and sin of RoPE in the rotate-half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.arange(T, dtype=torch.float32, device=device)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, config: AttentionLMConfig):
        super().__init__()
        self.heads, self.dropout, self.rope = config.heads, config.dropout, config.positions == "rope"
        self.theta = config.rope_theta
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, T, D) -> (batch, T, D), causal."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        if self.rope:
            cos, sin = rope_cos_sin(T, q.shape[-1], self.theta, x.device)
            q = q * cos.to(q.dtype) + rotate_half(q) * sin.to(q.dtype)
            k = k * cos.to(k.dtype) + rotate_half(k) * sin.to(k.dtype)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, config: AttentionLMConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.mlp_hidden, bias=config.bias)
        self.down = nn.Linear(config.mlp_hidden, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: AttentionLMConfig):
        super().__init__()
        self.norm1, self.attn = _norm(config), Attention(config)
        self.state_mixer = config.state_mixer
        self.norm2 = _norm(config) if config.state_mixer != "none" else None
        self.mlp = SwiGLU(config) if config.state_mixer == "swiglu" else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        if self.state_mixer == "identity":
            h = h + self.norm2(h)
        elif self.mlp is not None:
            h = h + self.mlp(self.norm2(h))
        return h


class AttentionLM(nn.Module):
    """``AttentionLM(config)(input_ids=(batch, T)) -> AttentionLMOutput(logits=(batch, T, vocab))``."""

    def __init__(self, config: AttentionLMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_positions, config.d_model) if config.positions == "learned" else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = _norm(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zoology's initialisation: N(0, init_std) for linear and embedding weights, zero biases,
        and the residual output projections at init_std / sqrt(2 n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                continue
            out = name.endswith("out_proj.weight") or name.endswith("down.weight")
            nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layers) if out else std)

    def forward(self, input_ids: torch.Tensor, **_) -> AttentionLMOutput:
        return AttentionLMOutput(logits=self.final_hidden(input_ids) @ self.embed.weight.T)

    def final_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, T, d_model): the normalised states the tied output layer reads."""
        T = input_ids.shape[1]
        if self.pos is not None and T > self.config.max_positions:
            raise ValueError(f"sequence of {T} tokens is longer than max_positions {self.config.max_positions}")
        h = self.embed(input_ids)
        if self.pos is not None:
            h = h + self.pos(torch.arange(T, device=input_ids.device))
        h = F.dropout(h, self.config.dropout, self.training)
        for block in self.layers:
            h = block(h)
        return self.norm_f(h)
