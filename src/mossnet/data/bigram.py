"""A smoothed token-bigram language model: the floor any trained model must beat.

Counts are sparse (``np.unique`` over pair codes ``prev * V + next``), never a dense V x V
matrix: with GPT-2's 50,257 tokens that matrix would have 2.5e9 entries, while a corpus of a
few million tokens has at most a few million distinct pairs.

Smoothing is interpolated absolute discounting: every seen pair gives up ``discount`` of its
count, and what is collected goes to the (add-one smoothed) unigram distribution,

    P(b | a) = max(c(a, b) - d, 0) / c(a)  +  d * T(a) / c(a) * P_uni(b)

where c(a) counts pairs starting with a and T(a) the distinct tokens seen after a. It sums to
one over b, gives every pair a non-zero probability, and falls back to P_uni(b) for a context
never seen in training (c(a) = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mossnet.data.token_store import check_token_ids


@dataclass(frozen=True)
class BigramModel:
    """Counts and smoothing of a fitted bigram model (V = ``vocab_size``, P = distinct pairs)."""

    vocab_size: int
    discount: float
    unigram_probs: np.ndarray  # (V,) float64, add-one smoothed, sums to 1
    pair_codes: np.ndarray  # (P,) int64, sorted: prev * V + next for every pair seen
    pair_counts: np.ndarray  # (P,) int64
    context_counts: np.ndarray  # (V,) int64: c(a)
    context_types: np.ndarray  # (V,) int64: T(a)


def fit_bigram(train_tokens: np.ndarray, vocab_size: int, discount: float = 0.75,
               block_tokens: int = 1 << 24) -> BigramModel:
    """Count unigrams and bigrams of a 1-D token array (e.g. ``open_split(dir, "train")``).

    The array is read ``block_tokens`` at a time (a memmap or a sharded split of any size never
    has to fit in memory as int64); each block's pair counts are merged into the running sparse
    table, and the pair that straddles two blocks is counted with the later one.
    """
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount must be in (0, 1), got {discount}")
    if getattr(train_tokens, "ndim", 1) != 1 or len(train_tokens) < 2:
        raise ValueError(f"need a 1-D array of at least 2 tokens, got shape {np.shape(train_tokens)}")
    check_token_ids(train_tokens, vocab_size)
    unigram_counts = np.zeros(vocab_size, dtype=np.int64)
    pair_codes = np.zeros(0, dtype=np.int64)
    pair_counts = np.zeros(0, dtype=np.int64)
    previous = None  # last token of the previous block
    for start in range(0, len(train_tokens), block_tokens):
        block = np.asarray(train_tokens[start : start + block_tokens], dtype=np.int64)
        unigram_counts += np.bincount(block, minlength=vocab_size)
        if previous is not None:
            block_pairs = np.concatenate([[previous], block])
        else:
            block_pairs = block
        codes, counts = np.unique(block_pairs[:-1] * vocab_size + block_pairs[1:], return_counts=True)
        pair_codes, pair_counts = _merge_counts(pair_codes, pair_counts, codes, counts)
        previous = int(block[-1])
    unigram_probs = (unigram_counts + 1.0) / (len(train_tokens) + vocab_size)
    contexts = pair_codes // vocab_size
    return BigramModel(
        vocab_size=vocab_size,
        discount=discount,
        unigram_probs=unigram_probs,
        pair_codes=pair_codes,
        pair_counts=pair_counts,
        context_counts=np.bincount(contexts, weights=pair_counts, minlength=vocab_size).astype(np.int64),
        context_types=np.bincount(contexts, minlength=vocab_size).astype(np.int64),
    )


def _merge_counts(codes_a, counts_a, codes_b, counts_b) -> tuple[np.ndarray, np.ndarray]:
    """Two sparse count tables (sorted unique codes, counts) as one."""
    if not len(codes_a):
        return codes_b.astype(np.int64), counts_b.astype(np.int64)
    codes, where = np.unique(np.concatenate([codes_a, codes_b]), return_inverse=True)
    counts = np.zeros(len(codes), dtype=np.int64)
    np.add.at(counts, where, np.concatenate([counts_a, counts_b]))
    return codes, counts


def bigram_log_probs(model: BigramModel, prev: np.ndarray, next_: np.ndarray) -> np.ndarray:
    """Natural-log P(next | prev) for aligned 1-D int arrays; shape (n,)."""
    prev = np.asarray(prev, dtype=np.int64)
    next_ = np.asarray(next_, dtype=np.int64)
    codes = prev * model.vocab_size + next_
    # Look every pair up in the sorted table of seen pairs; absent pairs have count 0.
    where = np.searchsorted(model.pair_codes, codes)
    where = np.minimum(where, len(model.pair_codes) - 1)
    counts = np.where(model.pair_codes[where] == codes, model.pair_counts[where], 0)
    context = model.context_counts[prev].astype(np.float64)
    seen = context > 0
    safe = np.where(seen, context, 1.0)  # avoid 0 / 0 for unseen contexts (masked out below)
    backoff_mass = model.discount * model.context_types[prev] / safe
    discounted = np.maximum(counts - model.discount, 0.0) / safe
    unigram = model.unigram_probs[next_]
    probs = np.where(seen, discounted + backoff_mass * unigram, unigram)
    return np.log(probs)


def bigram_cross_entropy(model: BigramModel, tokens: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per token) of ``tokens[1:]`` given their predecessor.

    Comparable with a language model's loss on the same array (which also predicts tokens
    1 .. n - 1); divide by ln 2 for bits per token.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError("need at least 2 tokens to score")
    check_token_ids(tokens, model.vocab_size)
    return float(-bigram_log_probs(model, tokens[:-1], tokens[1:]).mean())


def unigram_cross_entropy(model: BigramModel, tokens: np.ndarray) -> float:
    """Nats per token of ``tokens[1:]`` under the model's unigram distribution alone (a baseline)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError("need at least 2 tokens to score")
    check_token_ids(tokens, model.vocab_size)
    return float(-np.log(model.unigram_probs[tokens[1:]]).mean())
