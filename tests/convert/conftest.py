"""Tiny random Llama teachers saved as transformers directories, with a tokenizer, and a text
file to calibrate on: a conversion of one runs in seconds on the CPU."""

from __future__ import annotations

import pytest
import torch

TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "To be, or not to be, that is the question. All that glitters is not gold. "
    "Whether tis nobler in the mind to suffer the slings and arrows of outrageous fortune. "
)


def llama_config(**overrides):
    from transformers import LlamaConfig

    fields = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                  initializer_range=0.1)
    fields.update(overrides)
    return LlamaConfig(**fields)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from mossnet.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer([TEXT * 4], vocab_size=300)


@pytest.fixture
def make_teacher(tmp_path, tiny_tokenizer):
    """``make_teacher(name="teacher", save=True, **LlamaConfig overrides) -> (model, directory)``:
    random weights (norm weights too, so a swapped copy would show), eval mode."""
    from transformers import LlamaForCausalLM

    def make(name: str = "teacher", save: bool = True, **overrides):
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config(**overrides)).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.uniform_(0.5, 1.5)
        directory = tmp_path / name
        if save:
            model.save_pretrained(directory)
            tiny_tokenizer.save_pretrained(directory)
        return model, directory

    return make


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(TEXT * 30)
    return path
