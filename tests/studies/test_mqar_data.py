"""The MQAR generator: seeded, and every example is a correct associative-recall problem."""

from __future__ import annotations

import pytest
import torch

from mossnet.studies.mqar_data import BLANK, IGNORE_INDEX, MQARSpec, make_mqar, recall_accuracy


def test_same_seed_same_batch_other_seed_other_batch():
    spec = MQARSpec(vocab_size=64, seq_len=48, num_pairs=6)
    a = make_mqar(16, spec, seed=3)
    b = make_mqar(16, spec, seed=3)
    c = make_mqar(16, spec, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # a batch does not depend on the global RNG
    torch.manual_seed(0)
    d = make_mqar(16, spec, seed=3)
    torch.manual_seed(99)
    e = make_mqar(16, spec, seed=3)
    assert torch.equal(d[0], e[0]) and torch.equal(a[0], d[0])


@pytest.mark.parametrize("vocab,seq_len,pairs", [(64, 48, 6), (32, 12, 4), (256, 128, 16), (8, 3, 1)])
def test_every_example_is_a_correct_recall_problem(vocab, seq_len, pairs):
    spec = MQARSpec(vocab_size=vocab, seq_len=seq_len, num_pairs=pairs)
    x, y = make_mqar(64, spec, seed=11)
    assert x.shape == y.shape == (64, seq_len) and x.dtype == y.dtype == torch.long
    k_lo, k_hi = spec.key_range
    v_lo, v_hi = spec.value_range
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        keys, values = row_x[0:2 * pairs:2], row_x[1:2 * pairs:2]
        assert len(set(keys)) == pairs, "keys of one example are distinct"
        assert all(k_lo <= k < k_hi for k in keys) and all(v_lo <= v < v_hi for v in values)
        binding = dict(zip(keys, values))
        assert all(label == IGNORE_INDEX for label in row_y[:2 * pairs]), "no loss on the context"
        queried = []
        for t in range(2 * pairs, seq_len):
            if row_y[t] == IGNORE_INDEX:
                assert row_x[t] == BLANK, "the query region holds only queries and blanks"
            else:
                assert row_x[t] in binding and row_y[t] == binding[row_x[t]], "the label is the key's value"
                queried.append(row_x[t])
        assert sorted(queried) == sorted(keys), "every key is queried exactly once"


def test_queries_are_spread_over_the_region():
    spec = MQARSpec(vocab_size=64, seq_len=64, num_pairs=4)
    _, y = make_mqar(2000, spec, seed=0)
    pos = (y != IGNORE_INDEX).nonzero()[:, 1]
    assert int(pos.min()) == 8 and int(pos.max()) == 63
    counts = torch.bincount(pos - 8, minlength=56).float()
    assert counts.min() > 0.5 * counts.mean()  # roughly uniform


def test_impossible_specs_are_refused():
    with pytest.raises(ValueError, match="seq_len"):
        MQARSpec(vocab_size=64, seq_len=20, num_pairs=8)
    with pytest.raises(ValueError, match="keys"):
        MQARSpec(vocab_size=16, seq_len=64, num_pairs=8)
    with pytest.raises(ValueError, match="num_pairs"):
        MQARSpec(num_pairs=0)


def test_recall_accuracy_counts_only_queries():
    spec = MQARSpec(vocab_size=32, seq_len=24, num_pairs=4)
    x, y = make_mqar(8, spec, seed=1)
    perfect = torch.nn.functional.one_hot(y.clamp_min(0), 32).float()
    assert recall_accuracy(perfect, y) == (32, 32)
    wrong = torch.nn.functional.one_hot(torch.zeros_like(y), 32).float()
    assert recall_accuracy(wrong, y) == (0, 32)
