"""evaluate_perplexity against direct computations with the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mossnet.eval.perplexity import bits_per_byte, evaluate_perplexity

from .conftest import make_mossnet


def _tokens(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.uint16)


def _log_prob(model, context: np.ndarray, target: int) -> float:
    """log p(target | context) from one forward pass over the context alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(context, dtype=torch.long)[None]).logits[0, -1]
    return F.log_softmax(logits.float(), -1)[target].item()


def test_one_window_equals_hf_loss(tiny_llama):
    tokens = _tokens(50, tiny_llama.config.vocab_size)
    ids = torch.as_tensor(tokens, dtype=torch.long)[None]
    with torch.no_grad():
        want = tiny_llama(input_ids=ids, labels=ids).loss.item()  # mean over tokens 1..n-1
    got = evaluate_perplexity(tiny_llama, tokens, n_bytes=100, seq_len=64, progress=False)
    assert got["tokens"] == 49
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)


@pytest.mark.parametrize("n", [3 * 16 + 1, 3 * 16 + 7])  # whole windows, and a short last window
def test_stride_equal_to_seq_len_equals_window_by_window(tiny_llama, n):
    seq_len = 16
    tokens = _tokens(n, tiny_llama.config.vocab_size, seed=n)
    total, count = 0.0, 0
    for start in range(0, n - 1, seq_len):  # disjoint windows, each scored in full
        window = torch.as_tensor(tokens[start : start + seq_len + 1], dtype=torch.long)[None]
        with torch.no_grad():
            logits = tiny_llama(input_ids=window[:, :-1]).logits[0]
        total += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    got = evaluate_perplexity(tiny_llama, tokens, n_bytes=1, seq_len=seq_len, stride=seq_len, batch_size=2, progress=False)
    assert got["tokens"] == count == n - 1
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)


def test_sliding_window_scores_each_token_once_with_its_context(tiny_llama):
    """Token t is scored by the first window reaching it, i.e. from the tokens since that window's start."""
    seq_len, stride, n = 12, 4, 30
    tokens = _tokens(n, tiny_llama.config.vocab_size, seed=3)
    want = 0.0
    for t in range(1, n):
        start = max(0, math.ceil((t - seq_len) / stride) * stride)
        want -= _log_prob(tiny_llama, tokens[start:t], int(tokens[t]))
    got = evaluate_perplexity(tiny_llama, tokens, n_bytes=1, seq_len=seq_len, stride=stride, batch_size=3, progress=False)
    assert got["tokens"] == n - 1
    assert got["loss"] * got["tokens"] == pytest.approx(want, rel=1e-5)


def test_bits_per_byte_formula(tiny_llama):
    assert bits_per_byte(total_nats=math.log(2) * 10, n_bytes=5) == pytest.approx(2.0)
    tokens = _tokens(40, tiny_llama.config.vocab_size)
    got = evaluate_perplexity(tiny_llama, tokens, n_bytes=123, seq_len=8, progress=False)
    assert got["bits_per_byte"] == pytest.approx(got["loss"] * got["tokens"] / (math.log(2) * 123))
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_max_tokens_scores_a_prefix_and_scales_bytes(tiny_llama):
    tokens = _tokens(100, tiny_llama.config.vocab_size)
    got = evaluate_perplexity(tiny_llama, tokens, n_bytes=1000, seq_len=16, max_tokens=40, progress=False)
    prefix = evaluate_perplexity(tiny_llama, tokens[:40], n_bytes=400, seq_len=16, progress=False)
    assert got["tokens"] == 39 and got["bytes"] == 400 and got["bytes_estimated"]
    assert got["loss"] == pytest.approx(prefix["loss"])


def test_model_mode_is_restored(tiny_llama):
    tiny_llama.train()
    try:
        evaluate_perplexity(tiny_llama, _tokens(20, tiny_llama.config.vocab_size), 1, seq_len=8, progress=False)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


def test_works_with_mossnet():
    model = make_mossnet(300)
    tokens = _tokens(33, 300)
    ids = torch.as_tensor(tokens, dtype=torch.long)[None]
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits[0]
    want = F.cross_entropy(logits, ids[0, 1:]).item()
    got = evaluate_perplexity(model, tokens, n_bytes=50, seq_len=32, progress=False)
    assert got["loss"] == pytest.approx(want, rel=1e-5)
