"""Checkpoint parameter names are a contract: a checkpoint written before any refactor of the
layers loads bit-exactly and computes what it computed then.

The key list and the expected logits below were recorded with the code as it was before the
MoSSE moved to its one compact layout (the values are a seeded random state dict).
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from mossnet import MossNetConfig, MossNetForCausalLM

# (key, shape) of the tiny one-layer config below, in state_dict order.
RECORDED_KEYS = [
    ("model.embed_tokens.weight", (64, 16)),
    ("model.layers.0.mixer_norm.weight", (16,)),
    ("model.layers.0.mixer.in_proj", (4, 25, 16)),
    ("model.layers.0.mixer.conv_weight", (4, 16, 4)),
    ("model.layers.0.mixer.conv_bias", (4, 16)),
    ("model.layers.0.mixer.dt_bias", (4,)),
    ("model.layers.0.mixer.A_log", (4,)),
    ("model.layers.0.mixer.D", (4, 8)),
    ("model.layers.0.mixer.norm_weight", (4, 8)),
    ("model.layers.0.mixer.out_proj", (4, 16, 8)),
    ("model.layers.0.mixer.router.weight", (4, 16)),
    ("model.layers.0.mlp_norm.weight", (16,)),
    ("model.layers.0.mlp.gate_up", (4, 64, 16)),
    ("model.layers.0.mlp.down", (4, 16, 32)),
    ("model.layers.0.mlp.router.weight", (4, 16)),
    ("model.norm_f.weight", (16,)),
    ("lm_head.weight", (64, 16)),
]
# logits[0, -1, :6] of a full forward over IDS, and of one decode step after 20 tokens.
RECORDED_FORWARD = [-0.865502, -0.036962, -0.341791, 0.300881, 0.384895, 0.458908]
RECORDED_STEP = [0.545405, -0.221829, -0.219305, -0.122038, -0.209819, -0.046453]
IDS = torch.arange(23)[None] * 5 % 64


def config(**overrides):
    return MossNetConfig.from_preset("tiny", n_layers=1, vocab_size=64, d_model=16, ssm_head_dim=8, ssm_state_dim=4,
                                     mlp_hidden_dim=32, **overrides)


def recorded_state_dict():
    g = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=g) * 0.3 for key, shape in RECORDED_KEYS}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied
    return state


def test_state_dict_keys_are_unchanged():
    model = MossNetForCausalLM(config())
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == RECORDED_KEYS


def test_z_bias_adds_one_key_per_layer_only_when_on():
    keys = set(MossNetForCausalLM(config(ssm_z_bias=True)).state_dict())
    assert keys - {k for k, _ in RECORDED_KEYS} == {"model.layers.0.mixer.z_bias"}


def test_old_checkpoint_loads_bit_exactly_and_computes_the_same(tmp_path):
    old = recorded_state_dict()
    MossNetForCausalLM(config()).save_pretrained(tmp_path)  # config.json (+ shims)
    weights = tmp_path / "model.safetensors"
    saved = set(load_file(weights))
    assert saved <= set(old) and set(old) - saved <= {"lm_head.weight"}  # tied to the embedding
    save_file({k: v for k, v in old.items() if k in saved}, weights)
    model = MossNetForCausalLM.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, old[key]), key
    with torch.no_grad():
        forward = model(IDS).logits[0, -1, :6]
        cache = model(IDS[:, :20], use_cache=True).cache
        step = model(IDS[:, 20:21], cache=cache).logits[0, -1, :6]
    torch.testing.assert_close(forward, torch.tensor(RECORDED_FORWARD), rtol=0, atol=2e-6)
    torch.testing.assert_close(step, torch.tensor(RECORDED_STEP), rtol=0, atol=2e-6)
