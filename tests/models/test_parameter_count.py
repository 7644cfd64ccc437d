"""The one parameter-count module: active parameters and decode-state bytes, checked against
models built to use exactly those parameters and against the caches the models really keep."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.models.mossnet.cache import MossNetCache
from mossnet.models.parameter_count import (active_parameters, embedding_parameters, parameter_counts,
                                            state_bytes_per_layer, total_parameters)


def _meta(cls, config):
    with torch.device("meta"):
        return cls(config)


def _router_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "router" in name)


def test_routed_active_equals_a_model_holding_only_k_experts():
    """A token of a routed model uses its routers plus k experts per mixture: exactly the
    parameters of the same model built with k experts, apart from the wider routers."""
    routed = MossNetConfig.from_preset("tiny", ssm_experts=4, ssm_top_k=2, mlp_experts=4, mlp_top_k=2)
    k_only = MossNetConfig.from_preset("tiny", ssm_experts=2, ssm_top_k=2, mlp_experts=2, mlp_top_k=2)
    big, small = _meta(MossNetForCausalLM, routed), _meta(MossNetForCausalLM, k_only)
    assert active_parameters(big) == total_parameters(small) + _router_parameters(big) - _router_parameters(small)
    assert active_parameters(small) == total_parameters(small)


def test_state_update_all_runs_every_expert_but_routes_the_output_projection():
    cfg = MossNetConfig.from_preset("tiny", state_update="all", ssm_experts=4, ssm_top_k=2, mlp_experts=1,
                                    mlp_top_k=1)
    model = _meta(MossNetForCausalLM, cfg)
    unused_out_proj = cfg.n_layers * (cfg.ssm_experts - cfg.ssm_top_k) * cfg.d_model * cfg.ssm_head_dim
    assert active_parameters(model) == total_parameters(model) - unused_out_proj


def test_dense_baselines_are_all_active_and_tied_weights_count_once():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True))
    counts = parameter_counts(llama)
    by_hand = sum(p.numel() for name, p in llama.state_dict().items() if name != "lm_head.weight")
    assert counts == {"total": by_hand, "active": by_hand, "embedding": 64 * 32, "non_embedding": by_hand - 64 * 32}


def test_mossnet_embedding_is_vocab_by_width():
    cfg = MossNetConfig.from_preset("tiny")
    assert embedding_parameters(_meta(MossNetForCausalLM, cfg)) == cfg.vocab_size * cfg.d_model


def test_mossnet_state_bytes_equal_its_decode_cache():
    cfg = MossNetConfig.from_preset("tiny")
    cache = MossNetCache(cfg, batch_size=1, device="cpu")
    assert state_bytes_per_layer(cfg, seq_len=1000) * cfg.n_layers == cache.nbytes()


def test_llama_state_bytes_equal_its_kv_cache():
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64)
    seq = 7
    cache = LlamaForCausalLM(cfg)(torch.randint(0, 64, (1, seq)), use_cache=True).past_key_values
    layer = cache.layers[0]
    measured = sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    assert state_bytes_per_layer(cfg, seq_len=seq) == measured


def test_mamba2_state_bytes_are_its_ssm_state_and_conv_window():
    cfg = Mamba2Config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=4, head_dim=16, expand=2,
                       state_size=8, n_groups=1, conv_kernel=4, chunk_size=8)
    cache = Mamba2ForCausalLM(cfg)(torch.randint(0, 64, (1, 8)), use_cache=True).cache_params.layers[0]
    conv, ssm = cache.conv_states[0], cache.recurrent_states[0]
    # transformers keeps K conv columns; the recurrence needs the last K - 1 of them
    assert state_bytes_per_layer(cfg) == 4 * (conv.shape[1] * (cfg.conv_kernel - 1) + ssm.numel())


def test_unknown_architecture_has_no_state_rule():
    with pytest.raises(ValueError, match="gpt2"):
        state_bytes_per_layer(type("Cfg", (), {"model_type": "gpt2"})())
