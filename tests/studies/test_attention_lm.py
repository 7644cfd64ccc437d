"""The MQAR gate's attention model: its Llama-like setting is transformers' Llama, exactly."""

from __future__ import annotations

import pytest
import torch

from mossnet.studies.attention_lm import AttentionLM, AttentionLMConfig


def _llama_pair(heads: int, d: int = 32, hidden: int = 48, vocab: int = 50, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=d // heads, tie_word_embeddings=True,
        max_position_embeddings=64, rms_norm_eps=1e-6, attn_implementation="eager")).eval()
    ours = AttentionLM(AttentionLMConfig(
        vocab_size=vocab, d_model=d, n_layers=layers, heads=heads, positions="rope", norm="rmsnorm", norm_eps=1e-6,
        bias=False, dropout=0.0, state_mixer="swiglu", mlp_hidden=hidden)).eval()
    with torch.no_grad():
        ours.embed.weight.copy_(llama.model.embed_tokens.weight)
        ours.norm_f.weight.copy_(llama.model.norm.weight)
        for mine, theirs in zip(ours.layers, llama.model.layers):
            a = theirs.self_attn
            mine.attn.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            mine.attn.out_proj.weight.copy_(a.o_proj.weight)
            mine.norm1.weight.copy_(theirs.input_layernorm.weight)
            mine.norm2.weight.copy_(theirs.post_attention_layernorm.weight)
            mine.mlp.gate_up.weight.copy_(torch.cat([theirs.mlp.gate_proj.weight, theirs.mlp.up_proj.weight]))
            mine.mlp.down.weight.copy_(theirs.mlp.down_proj.weight)
    return ours, llama


@pytest.mark.parametrize("heads", [1, 2])
def test_llama_like_setting_is_transformers_llama(heads):
    torch.manual_seed(0)
    ours, llama = _llama_pair(heads)
    x = torch.randint(0, 50, (3, 20))
    torch.testing.assert_close(ours(input_ids=x).logits, llama(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def _zoology_reference(model: AttentionLM, x: torch.Tensor) -> torch.Tensor:
    """Zoology's block order written out (eval mode): the residual gains attn(LN1(r)), then
    LN2(r) (its Identity state mixer's output, added by the next block or the final step)."""
    import math

    r = model.embed(x) + model.pos(torch.arange(x.shape[1]))
    for block in model.layers:
        u = block.norm1(r)
        qkv = block.attn.qkv(u)
        q, k, v = qkv.chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1), -1e9)
        r = r + block.attn.out_proj(torch.softmax(scores, -1) @ v)
        r = r + block.norm2(r)
    return model.norm_f(r) @ model.embed.weight.T


def test_zoology_setting_matches_a_written_out_reference():
    torch.manual_seed(1)
    model = AttentionLM(AttentionLMConfig(vocab_size=40, d_model=16, max_positions=24)).eval()
    for p in model.parameters():  # non-trivial norms and biases
        torch.nn.init.normal_(p, std=0.3) if p.ndim == 1 else None
    x = torch.randint(0, 40, (2, 24))
    torch.testing.assert_close(model(input_ids=x).logits, _zoology_reference(model, x), rtol=1e-5, atol=1e-5)
    per_block = 3 * 16 * 17 + 16 * 17 + 4 * 16  # qkv and out_proj with biases, two LayerNorms
    assert sum(p.numel() for p in model.parameters()) == 40 * 16 + 24 * 16 + 2 * per_block + 2 * 16


def test_bad_settings_are_refused_and_positions_are_bounded():
    with pytest.raises(ValueError, match="positions"):
        AttentionLMConfig(vocab_size=8, positions="alibi")
    with pytest.raises(ValueError, match="heads"):
        AttentionLMConfig(vocab_size=8, d_model=30, heads=4)
    model = AttentionLM(AttentionLMConfig(vocab_size=8, d_model=8, max_positions=4))
    with pytest.raises(ValueError, match="max_positions"):
        model(input_ids=torch.zeros(1, 5, dtype=torch.long))
