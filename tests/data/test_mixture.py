"""Data mixtures: parsing ``--data A:0.7,B:0.3`` and sampling rows by weight, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from mossnet.data.mixture import MixtureBatches, parse_data_sources
from mossnet.errors import DataError


def test_parse_splits_at_the_last_colon_and_normalises():
    assert [(s.path, s.weight) for s in parse_data_sources("a:0.7,b:0.3")] == [("a", 0.7), ("b", 0.3)]
    assert [(s.path, s.weight) for s in parse_data_sources("x:y:1,z:3")] == [("x:y", 0.25), ("z", 0.75)]
    assert [(s.path, s.weight) for s in parse_data_sources("dir:name")] == [("dir:name", 1.0)]
    with pytest.raises(DataError, match="weight must be a finite number > 0"):
        parse_data_sources("a:0,b:1")
    with pytest.raises(DataError, match="twice"):
        parse_data_sources("a:1,a:2")


def _sources():
    # source s holds only the value s, so every row tells where it came from
    return [np.full(1000, 0, dtype=np.uint16), np.full(500, 1, dtype=np.uint16), np.full(300, 2, dtype=np.uint16)]


def test_rows_follow_the_weights():
    weights = [0.6, 0.3, 0.1]
    batches = MixtureBatches(_sources(), weights, batch_size=64, seq_len=8, seed=3)
    counts = np.zeros(3)
    for _ in range(200):
        ids, _ = next(batches)
        counts += np.bincount(ids[:, 0].numpy(), minlength=3)
    share = counts / counts.sum()
    assert np.allclose(share, weights, atol=0.02), share  # 12,800 rows: sd of a share <= 0.0044


def test_ranks_split_one_global_draw_and_resume_is_exact():
    one = MixtureBatches(_sources(), [0.5, 0.3, 0.2], batch_size=8, seq_len=4, seed=1)
    two = [MixtureBatches(_sources(), [0.5, 0.3, 0.2], batch_size=4, seq_len=4, seed=1, rank=r, world_size=2)
           for r in range(2)]
    for step in range(5):
        whole, _ = one.batch(step)
        halves = [b.batch(step)[0] for b in two]
        assert (whole.numpy() == np.concatenate([h.numpy() for h in halves])).all()
    first = [next(one)[0] for _ in range(3)]
    again = MixtureBatches(_sources(), [0.5, 0.3, 0.2], batch_size=8, seq_len=4, seed=1)
    again.load_state_dict({"step": 1, "seed": 1})
    assert (next(again)[0] == first[1]).all()


def test_a_source_shorter_than_a_window_is_refused():
    with pytest.raises(DataError, match="source 1 of the mixture has 3 tokens"):
        MixtureBatches([np.zeros(100, np.uint16), np.zeros(3, np.uint16)], [1, 1], batch_size=2, seq_len=8)
