"""AdamW weight-decay groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mossnet.train.optim import build_optimizer, group_param_names, lr_at, split_decay_params


def _tiny_mossnet():
    from mossnet import MossNetConfig, MossNetForCausalLM

    return MossNetForCausalLM(MossNetConfig(vocab_size=64, d_model=16, n_layers=2, ssm_experts=2, ssm_top_k=1,
                                            ssm_head_dim=8, ssm_state_dim=4, mlp_experts=2, mlp_top_k=1,
                                            mlp_hidden_dim=32, chunk_size=8))


def test_mossnet_no_decay_groups():
    model = _tiny_mossnet()
    decay, no_decay = split_decay_params(model)
    params = dict(model.named_parameters())
    assert set(decay) | set(no_decay) == set(params) and not set(decay) & set(no_decay)
    for name in no_decay:  # never a projection matrix
        assert params[name].ndim < 2 or any(k in name for k in ("embed", "norm", "A_log", "dt_bias", ".D", "bias")), name
    for name in decay:
        assert params[name].ndim >= 2, name
        assert not any(k in name for k in ("embed", "norm", "A_log", "dt_bias", "conv_bias")), name
    # the stacked per-expert 2-D tensors that must not decay
    assert any("mixer.D" in n for n in no_decay) and any("norm_weight" in n for n in no_decay)
    assert any("in_proj" in n for n in decay) and any("out_proj" in n for n in decay)
    assert any("gate_up" in n for n in decay) and any("router" in n for n in decay)
    assert "model.embed_tokens.weight" in no_decay  # and the tied LM head with it (listed once)
    assert "lm_head.weight" not in decay


def test_llama_no_decay_groups():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    decay, no_decay = split_decay_params(model)
    assert "model.embed_tokens.weight" in no_decay
    assert all("norm" in n for n in no_decay if n != "model.embed_tokens.weight")
    assert "lm_head.weight" in decay and "model.layers.0.self_attn.q_proj.weight" in decay


def test_optimizer_groups_and_names():
    model = _tiny_mossnet()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    names = group_param_names(model, opt)
    assert names == list(split_decay_params(model))


def test_schedule_shape():
    lr, warm, total, ratio = 1e-3, 10, 100, 0.1
    lrs = [lr_at(s, lr, warm, total, ratio) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(lr / warm)  # first step is not 0
    assert lrs[warm - 1] == pytest.approx(lr)  # peak at the end of warmup
    assert all(b > a for a, b in zip(lrs[: warm - 1], lrs[1:warm]))  # linear warmup
    assert lrs[warm] == pytest.approx(lr)
    assert all(b <= a + 1e-15 for a, b in zip(lrs[warm:total], lrs[warm + 1: total + 1]))  # monotone decay
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(ratio * lr + 0.5 * (lr - ratio * lr))  # cosine: half-way at the middle
    assert lrs[total] == pytest.approx(ratio * lr) and lrs[-1] == pytest.approx(ratio * lr)
    assert lr_at(0, lr, 0, total, ratio) == pytest.approx(lr)  # no warmup
    assert not any(math.isnan(x) for x in lrs)


def test_weight_decay_applies_only_to_decay_group():
    model = _tiny_mossnet()
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay moves parameters
    decay, no_decay = split_decay_params(model)
    params = dict(model.named_parameters())
    for n in no_decay:
        assert torch.equal(params[n], before[n]), n
    for n in decay:
        assert torch.allclose(params[n], before[n] * (1 - 0.1 * 0.5)), n
