"""The transformers baselines the trainer and the studies build (``mossnet.train.baselines``)."""

from __future__ import annotations

import torch

from mossnet.studies.arch_configs import reference_config
from mossnet.train.baselines import MAMBA2_CHUNK, baseline_config


def test_mamba2_chunk_size_does_not_change_the_function():
    """The Mamba-2 baseline scans in chunks of 64 (faster in transformers' kernel-less path than its
    default 256); the chunking is an evaluation order, so the logits and gradients must not move."""
    from transformers import Mamba2ForCausalLM

    ref = reference_config("tiny", 128, {"d_model": 32, "n_layers": 2, "ssm_head_dim": 16, "ssm_state_dim": 8})
    small = baseline_config("mamba2", ref, seq_len=200)
    assert small.chunk_size == MAMBA2_CHUNK
    large = small.__class__(**{**small.to_dict(), "chunk_size": 256})
    x = torch.randint(0, 128, (2, 200))  # odd length: 3 whole chunks of 64 and a ragged one
    outs = []
    for cfg in (small, large):
        torch.manual_seed(0)
        model = Mamba2ForCausalLM(cfg)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        outs.append((out.logits.detach(), model.backbone.layers[0].mixer.A_log.grad.clone()))
    # fp32 (transformers' fallback computes parts of the scan in fp32 whatever the model dtype):
    # a chunking bug moves logits by ~0.1, summation order by ~1e-7
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)
    assert baseline_config("mamba2", ref, seq_len=32).chunk_size == 32  # never longer than the sequence


def test_llama_has_the_standard_mlp_and_the_nearest_depth():
    """Llama keeps d_model, takes the 8/3 SwiGLU, and the depth whose parameter count is nearest
    the reference's active count (no other depth is closer)."""
    from transformers import LlamaForCausalLM

    from mossnet.studies.arch_configs import mossnet_active
    from mossnet.models.parameter_count import total_parameters
    from mossnet.train.baselines import llama_mlp_width

    ref = reference_config("tiny", 8192, {"d_model": 256, "n_layers": 6, "ssm_head_dim": 64, "ssm_state_dim": 32})
    target = mossnet_active(ref)
    cfg = baseline_config("llama", ref, seq_len=256)
    assert cfg.hidden_size == 256 and cfg.intermediate_size == llama_mlp_width(256) == 680
    assert abs(cfg.intermediate_size / cfg.hidden_size - 8 / 3) < 0.02

    def gap(layers: int) -> int:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg.__class__(**{**cfg.to_dict(), "num_hidden_layers": layers}))
        return abs(total_parameters(model) - target)

    L = cfg.num_hidden_layers
    assert gap(L) <= gap(L + 1) and (L == 1 or gap(L) <= gap(L - 1))
    assert gap(L) < 0.02 * target  # at the GPU study's size the depth matches within 2%


def test_mamba2_starts_from_the_usual_initializer_range():
    """transformers' Mamba-2 default (0.1) draws every linear layer and the tied embedding ~5x
    wider than the usual 0.02; the baseline sets 0.02, and the weights show it."""
    from transformers import Mamba2ForCausalLM

    ref = reference_config("tiny", 512, {"d_model": 64, "n_layers": 2, "ssm_head_dim": 16, "ssm_state_dim": 8})
    cfg = baseline_config("mamba2", ref, seq_len=64)
    assert cfg.initializer_range == 0.02
    torch.manual_seed(0)
    model = Mamba2ForCausalLM(cfg)
    std = float(model.get_input_embeddings().weight.detach().std())
    assert 0.015 < std < 0.025, std
