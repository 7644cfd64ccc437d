"""Recall probes: the repeated-passage loss and passkey retrieval."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mossnet.eval.probes import PASSKEY_INTRO, PASSKEY_QUESTION, passkey_prompt, passkey_retrieval, repeated_passage_loss

VOCAB = 50


class CopyModel(torch.nn.Module):
    """Predicts token t+1 = token t+1-period, exactly, once ``period`` tokens have been seen; uniform
    before. A perfect copier of a passage of length ``period`` repeated once."""

    def __init__(self, period: int):
        super().__init__()
        self.period, self.anchor = period, torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, **kwargs):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, VOCAB)
        for pos in range(self.period - 1, t):
            logits[torch.arange(b), pos, input_ids[:, pos + 1 - self.period]] = 30.0
        return SimpleNamespace(logits=logits)


def test_repeated_passage_copier_scores_near_zero_on_second_copy():
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=500)
    result = repeated_passage_loss(CopyModel(period=16), tokens, passages=5, passage_len=16, batch_size=2)
    assert result["second_copy_loss"] < 1e-6
    assert result["first_copy_loss"] > 1.0  # mostly wrong guesses before the copy starts


def test_repeated_passage_loss_equals_direct_computation(tiny_llama):
    tokens = np.random.default_rng(1).integers(0, tiny_llama.config.vocab_size, size=300)
    got = repeated_passage_loss(tiny_llama, tokens, passages=3, passage_len=20, batch_size=2, seed=4)
    starts = np.random.default_rng(4).integers(0, len(tokens) - 20, size=3)
    first, second = [], []
    for s in starts:
        ids = torch.tensor(np.concatenate([tokens[s : s + 20]] * 2))[None]
        with torch.no_grad():
            losses = F.cross_entropy(tiny_llama(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="none")
        first.append(losses[:19].mean())
        second.append(losses[20:].mean())
    assert got["first_copy_loss"] == pytest.approx(torch.stack(first).mean().item(), rel=1e-5)
    assert got["second_copy_loss"] == pytest.approx(torch.stack(second).mean().item(), rel=1e-5)


def test_repeated_passage_needs_enough_tokens(tiny_llama):
    with pytest.raises(ValueError, match="more than 64"):
        repeated_passage_loss(tiny_llama, np.zeros(64, dtype=np.int64), passage_len=64)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_length_and_depth(tiny_tokenizer, depth):
    ids = passkey_prompt(tiny_tokenizer, 400, "12345", depth)
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert 300 <= len(ids) <= 400
    assert text.rstrip().endswith(PASSKEY_QUESTION)
    filler_start, filler_end = len(PASSKEY_INTRO.strip()), text.rindex(PASSKEY_QUESTION)
    at = (text.index("12345") - filler_start) / (filler_end - filler_start)
    assert abs(at - depth) < 0.15


class KeyReader(torch.nn.Module):
    """Answers with the first five-digit number of its prompt (a perfect retriever)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer, self.anchor = tokenizer, torch.nn.Parameter(torch.zeros(()))

    def generate(self, input_ids, **kwargs):
        key = re.search(r"\d{5}", self.tokenizer.decode(input_ids[0])).group()
        answer = self.tokenizer.encode(" " + key, add_special_tokens=False)
        return torch.cat([input_ids, torch.tensor([answer])], dim=1)


def test_passkey_retrieval_scores_a_perfect_retriever(tiny_tokenizer):
    result = passkey_retrieval(KeyReader(tiny_tokenizer), tiny_tokenizer, [200, 400], trials=3)
    assert result["200"]["accuracy"] == result["400"]["accuracy"] == 1.0
    assert [a["depth"] for a in result["400"]["answers"]] == pytest.approx([1 / 6, 0.5, 5 / 6], abs=1e-3)


def test_passkey_retrieval_runs_on_a_real_model(tiny_llama, tiny_tokenizer):
    result = passkey_retrieval(tiny_llama, tiny_tokenizer, [100], trials=2)
    assert 0.0 <= result["100"]["accuracy"] <= 1.0 and len(result["100"]["answers"]) == 2
