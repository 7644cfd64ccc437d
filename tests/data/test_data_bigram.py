"""The bigram baseline: normalised, sparse, and better than a unigram model on held-out text."""

from __future__ import annotations

import numpy as np
import pytest

from mossnet.data.bigram import bigram_cross_entropy, bigram_log_probs, fit_bigram, unigram_cross_entropy
from mossnet.data.token_store import open_split


def test_probabilities_sum_to_one_for_every_context():
    rng = np.random.default_rng(0)
    vocab = 12
    model = fit_bigram(rng.integers(0, vocab - 2, size=500), vocab)  # ids 10, 11 never seen
    for prev in range(vocab):
        probs = np.exp(bigram_log_probs(model, np.full(vocab, prev), np.arange(vocab)))
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert (probs > 0).all()


def test_counts_are_sparse():
    model = fit_bigram(np.array([5, 7, 5, 7, 5], dtype=np.uint16), vocab_size=50_257)
    assert model.pair_codes.tolist() == [5 * 50_257 + 7, 7 * 50_257 + 5]
    assert model.pair_counts.tolist() == [2, 2]


def test_bigram_beats_unigram_on_held_out_text(prepared):
    out, manifest = prepared
    model = fit_bigram(open_split(out, "train"), manifest["vocab_size"])
    val = open_split(out, "val")
    bigram, unigram = bigram_cross_entropy(model, val), unigram_cross_entropy(model, val)
    assert 0 < bigram < unigram < np.log(manifest["vocab_size"])
    assert unigram - bigram > 0.3  # nats per token: a clear margin, not noise


def test_out_of_range_id_is_rejected():
    model = fit_bigram(np.array([0, 1, 2, 1, 0]), vocab_size=3)
    with pytest.raises(ValueError, match="token id 3 .*vocab_size=3"):
        bigram_cross_entropy(model, np.array([0, 3]))


def test_fitting_block_by_block_equals_fitting_at_once():
    tokens = np.random.default_rng(1).integers(0, 40, size=2_000)
    whole = fit_bigram(tokens, 40, block_tokens=len(tokens))
    for block in (1, 7, 999, 1000):
        blocks = fit_bigram(tokens, 40, block_tokens=block)
        for field in ("unigram_probs", "pair_codes", "pair_counts", "context_counts", "context_types"):
            assert np.array_equal(getattr(blocks, field), getattr(whole, field)), (block, field)
    pairs = tokens[:-1] * 40 + tokens[1:]  # the obvious count, for the reference itself
    codes, counts = np.unique(pairs, return_counts=True)
    assert whole.pair_codes.tolist() == codes.tolist() and whole.pair_counts.tolist() == counts.tolist()
