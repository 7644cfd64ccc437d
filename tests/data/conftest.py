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
