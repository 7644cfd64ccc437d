"""Training batches (deterministic, resumable, rank-aware) and evaluation windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mossnet.data.batches import IGNORE_INDEX, TokenBatches, sequential_windows

TOKENS = np.arange(10_000, dtype=np.uint16) % 997  # inputs/labels relation is checkable


def _take(batches, n):
    return [next(batches) for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_shapes_dtypes_and_labels_are_shifted_inputs():
    inputs, labels = next(TokenBatches(TOKENS, batch_size=4, seq_len=16, seed=0))
    assert inputs.shape == labels.shape == (4, 16)
    assert inputs.dtype == labels.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], labels[:, :-1])  # same window, shifted by one
    assert torch.equal(labels, (inputs + 1) % 997)  # the next token of the array


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = _take(TokenBatches(TOKENS, 4, 16, seed=1), 3)
    b = _take(TokenBatches(TOKENS, 4, 16, seed=1), 3)
    c = _take(TokenBatches(TOKENS, 4, 16, seed=2), 3)
    assert _same(a, b) and not _same(a, c)
    assert not torch.equal(a[0][0], a[1][0])  # successive batches differ


def test_resume_from_state_dict_gives_the_same_next_batches():
    run = TokenBatches(TOKENS, 4, 16, seed=7)
    _take(run, 5)
    state = run.state_dict()
    assert state == {"step": 5, "seed": 7} and all(type(v) is int for v in state.values())
    expected = _take(run, 3)
    resumed = TokenBatches(TOKENS, 4, 16, seed=0)  # seed comes from the state
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 3), expected)
    assert _same([resumed.batch(5)], expected[:1])  # batch n is a pure function of n


def test_ranks_get_different_batches_that_tile_the_global_batch():
    ranks = [TokenBatches(TOKENS, 2, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    single = TokenBatches(TOKENS, 4, 16, seed=3)
    for _ in range(3):
        (in0, lab0), (in1, lab1) = next(ranks[0]), next(ranks[1])
        assert not torch.equal(in0, in1)
        inputs, labels = next(single)
        assert torch.equal(torch.cat([in0, in1]), inputs) and torch.equal(torch.cat([lab0, lab1]), labels)


def test_out_of_range_id_names_the_id_and_vocab_size():
    tokens = np.zeros(100, dtype=np.uint16)
    tokens[42] = 600
    with pytest.raises(ValueError, match=r"token id 600 at position 42 .*vocab_size=512"):
        TokenBatches(tokens, 2, 8, seed=0, vocab_size=512)
    TokenBatches(tokens, 2, 8, seed=0, vocab_size=601)  # fits


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=2, world_size=2), "rank"),
        (dict(seq_len=10_000), "too few"),
        (dict(batch_size=0), "positive"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(tokens=TOKENS, batch_size=2, seq_len=8, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        TokenBatches(**args)


def test_works_on_a_memmap(tmp_path):
    path = tmp_path / "t.bin"
    TOKENS.tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    assert _same(_take(TokenBatches(tokens, 3, 32, seed=5), 2), _take(TokenBatches(TOKENS, 3, 32, seed=5), 2))


@pytest.mark.parametrize(
    "n, seq_len, stride, batch_size", [(100, 16, None, 1), (100, 16, 5, 3), (17, 16, 16, 4), (50, 8, 8, 8)]
)
def test_sequential_windows_score_every_token_once(n, seq_len, stride, batch_size):
    tokens = np.arange(n, dtype=np.int64)
    scored = []
    for inputs, labels in sequential_windows(tokens, seq_len, stride, batch_size):
        assert inputs.shape == labels.shape and inputs.shape[0] <= batch_size and inputs.shape[1] <= seq_len
        kept = labels != IGNORE_INDEX
        assert torch.equal(labels[kept], (inputs + 1)[kept])  # each label is the next token
        scored += labels[kept].tolist()
    assert scored == list(range(1, n))


def test_sequential_windows_rejects_a_stride_that_skips_tokens():
    with pytest.raises(ValueError, match="stride"):
        list(sequential_windows(TOKENS, 8, stride=9))
