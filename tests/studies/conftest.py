"""Fixtures of the study tests: a tiny prepared corpus the language-model studies can train on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def make_corpus(path: Path, vocab: int = 64, n_train: int = 6000, n_val: int = 700) -> Path:
    """A prepared corpus (manifest + token files) of a noisy repeating pattern: learnable."""
    from mossnet.data.token_store import FORMAT, write_manifest, write_tokens

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = {}
    for split, n in (("train", n_train), ("val", n_val)):
        base = np.arange(n) % 17 + 1
        noise = rng.integers(1, vocab, n)
        ids = np.where(rng.random(n) < 0.2, noise, base).astype(np.uint16)
        count, sha = write_tokens(path / f"{split}.bin", [ids], np.uint16)
        entries[split] = {"file": f"{split}.bin", "tokens": count, "bytes": 3 * count, "documents": 1, "sha256": sha}
    write_manifest(path, {"format": FORMAT, "corpus": "synthetic", "tokenizer": "none", "vocab_size": vocab,
                          "eos_id": 0, "dtype": "uint16", "splits": entries})
    return path


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "data")
