"""The MQAR generator: seeded, every example a correct associative-recall problem, Zoology's
sampling by default, the earlier grids' sampling on request, and Zoology's training mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mossnet.studies.mqar_data import (BLANK, IGNORE_INDEX, UNIFORM_OPTIONS, ZOOLOGY_TRAIN_MIXTURE, MQARSpec,
                                       make_mqar, make_mqar_mixture, power_law_weights, recall_accuracy)


def test_defaults_are_zoologys():
    spec = MQARSpec()
    assert (spec.vocab_size, spec.values_replace, spec.power_a, spec.random_filler) == (8192, False, 0.01, True)
    assert [(T, n) for T, n, _ in ZOOLOGY_TRAIN_MIXTURE] == [(64, 4), (128, 8), (256, 16), (256, 32), (256, 64)]


def test_same_seed_same_batch_other_seed_other_batch():
    spec = MQARSpec(vocab_size=64, seq_len=48, num_pairs=6)
    a = make_mqar(16, spec, seed=3)
    b = make_mqar(16, spec, seed=3)
    c = make_mqar(16, spec, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(0)  # a batch does not depend on the global RNG
    d = make_mqar(16, spec, seed=3)
    torch.manual_seed(99)
    e = make_mqar(16, spec, seed=3)
    assert torch.equal(d[0], e[0]) and torch.equal(a[0], d[0])


def check_example(row_x, row_y, spec: MQARSpec) -> None:
    """One example against the task's definition (the slow, obvious check)."""
    n = spec.num_pairs
    keys, values = row_x[0:2 * n:2], row_x[1:2 * n:2]
    k_lo, k_hi = spec.key_range
    v_lo, v_hi = spec.value_range
    assert len(set(keys)) == n, "keys of one example are distinct"
    assert spec.values_replace or len(set(values)) == n, "values are drawn without replacement"
    assert all(k_lo <= k < k_hi for k in keys) and all(v_lo <= v < v_hi for v in values)
    binding = dict(zip(keys, values))
    assert all(label == IGNORE_INDEX for label in row_y[:2 * n]), "no loss on the context"
    queried = []
    for t in range(2 * n, spec.seq_len):
        if row_y[t] != IGNORE_INDEX:
            assert row_x[t] in binding and row_y[t] == binding[row_x[t]], "the label is the key's value"
            queried.append(row_x[t])
            if spec.power_a is not None:
                assert (t - 2 * n) % 2 == 0, "Zoology's queries sit at even offsets after the pairs"
        elif not spec.random_filler:
            assert row_x[t] == BLANK, "the query region holds only queries and blanks"
    assert sorted(queried) == sorted(keys), "every key is queried exactly once"


@pytest.mark.parametrize("options", [{}, UNIFORM_OPTIONS, dict(random_filler=False)],
                         ids=["zoology", "uniform", "blank"])
@pytest.mark.parametrize("vocab,seq_len,pairs", [(64, 48, 6), (32, 16, 4), (256, 128, 16), (8, 4, 1)])
def test_every_example_is_a_correct_recall_problem(vocab, seq_len, pairs, options):
    spec = MQARSpec(vocab_size=vocab, seq_len=seq_len, num_pairs=pairs, **options)
    x, y = make_mqar(64, spec, seed=11)
    assert x.shape == y.shape == (64, seq_len) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        check_example(row_x, row_y, spec)


def test_random_filler_covers_the_vocabulary():
    spec = MQARSpec(vocab_size=64, seq_len=64, num_pairs=4)
    x, y = make_mqar(256, spec, seed=0)
    filler = x[:, 8:][y[:, 8:] == IGNORE_INDEX]
    assert len(set(filler.tolist())) == 64  # uniform over [0, vocab)


def _zoology_slots_numpy(batch: int, space: int, n: int, power_a: float, seed: int) -> np.ndarray:
    """Zoology's draw written with numpy: n distinct slots, weights (j+1)^(a-1), in draw order."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, space + 1) ** (power_a - 1.0)
    p = p / p.sum()
    return np.stack([rng.choice(space, size=n, replace=False, p=p) for _ in range(batch)])


def test_power_law_gaps_follow_zoologys_distribution():
    """The slot of each pair's query, ours against numpy's weighted draw without replacement:
    the same distribution (histograms within sampling noise), most mass on the nearest slots."""
    spec = MQARSpec(vocab_size=64, seq_len=40, num_pairs=4)  # space = 16 slots
    x, y = make_mqar(6000, spec, seed=5)
    keys = x[:, 0:8:2]
    ours = np.zeros((6000, 4), dtype=int)
    pos = (y != IGNORE_INDEX).nonzero().tolist()
    for b, t in pos:
        ours[b, keys[b].tolist().index(int(x[b, t]))] = (t - 8) // 2
    ref = _zoology_slots_numpy(6000, 16, 4, 0.01, seed=1)
    for pair in range(4):
        h_ours = np.bincount(ours[:, pair], minlength=16) / 6000
        h_ref = np.bincount(ref[:, pair], minlength=16) / 6000
        assert np.abs(h_ours - h_ref).max() < 0.03, (pair, h_ours.round(3), h_ref.round(3))
    assert np.bincount(ours[:, 0], minlength=16)[0] > np.bincount(ours[:, 0], minlength=16)[15] * 3
    w = power_law_weights(16, 0.01)
    assert abs(float(w.sum()) - 1) < 1e-12 and bool((w[1:] < w[:-1]).all())


def _earlier_generator(batch: int, spec: MQARSpec, seed: int):
    """The generator of the earlier grids, as it was: the reference for ``UNIFORM_OPTIONS``."""
    g = torch.Generator().manual_seed(int(seed))
    n, T = spec.num_pairs, spec.seq_len
    rows = torch.arange(batch)[:, None]
    keys = torch.rand(batch, spec.vocab_size // 2 - 1, generator=g).argsort(dim=1)[:, :n] + 1
    values = torch.randint(spec.vocab_size // 2, spec.vocab_size, (batch, n), generator=g)
    x = torch.full((batch, T), BLANK, dtype=torch.long)
    y = torch.full((batch, T), IGNORE_INDEX, dtype=torch.long)
    x[:, 0:2 * n:2], x[:, 1:2 * n:2] = keys, values
    positions = torch.rand(batch, T - 2 * n, generator=g).argsort(dim=1)[:, :n] + 2 * n
    order = torch.rand(batch, n, generator=g).argsort(dim=1)
    x[rows, positions] = keys.gather(1, order)
    y[rows, positions] = values.gather(1, order)
    return x, y


def test_uniform_options_draw_what_the_earlier_generator_drew():
    spec = MQARSpec(vocab_size=64, seq_len=64, num_pairs=8, **UNIFORM_OPTIONS)
    for got, want in zip(make_mqar(32, spec, 7), _earlier_generator(32, spec, 7)):
        assert torch.equal(got, want)


def test_mixture_rows_are_correct_examples_of_their_slice_padded_to_the_longest():
    slices = ((16, 2, 3), (32, 4, 1))
    x, y, which = make_mqar_mixture(400, slices, seed=2, vocab_size=64)
    assert x.shape == y.shape == (400, 32)
    assert 0.68 < float((which == 0).float().mean()) < 0.82  # drawn 3 : 1
    for row_x, row_y, i in zip(x.tolist(), y.tolist(), which.tolist()):
        T, n, _ = slices[i]
        check_example(row_x[:T], row_y[:T], MQARSpec(vocab_size=64, seq_len=T, num_pairs=n))
        assert all(t == BLANK for t in row_x[T:]) and all(label == IGNORE_INDEX for label in row_y[T:])
    again = make_mqar_mixture(400, slices, seed=2, vocab_size=64)
    assert all(torch.equal(a, b) for a, b in zip((x, y, which), again))


def test_impossible_specs_are_refused():
    with pytest.raises(ValueError, match="seq_len"):
        MQARSpec(vocab_size=64, seq_len=28, num_pairs=8)  # Zoology's gaps need 4 x pairs
    MQARSpec(vocab_size=64, seq_len=24, num_pairs=8, power_a=None)  # uniform positions need 3 x pairs
    with pytest.raises(ValueError, match="keys"):
        MQARSpec(vocab_size=16, seq_len=64, num_pairs=8)
    with pytest.raises(ValueError, match="num_pairs"):
        MQARSpec(num_pairs=0)
    with pytest.raises(ValueError, match="power_a"):
        MQARSpec(power_a=0.0)


def test_recall_accuracy_counts_only_queries():
    spec = MQARSpec(vocab_size=32, seq_len=24, num_pairs=4)
    x, y = make_mqar(8, spec, seed=1)
    perfect = torch.nn.functional.one_hot(y.clamp_min(0), 32).float()
    assert recall_accuracy(perfect, y) == (32, 32)
    wrong = torch.nn.functional.one_hot(torch.zeros_like(y), 32).float()
    assert recall_accuracy(wrong, y) == (0, 32)
