"""Multi-query associative recall (MQAR), a seeded generator of our own.

The task comes from the Zoology line of work (Arora et al., 2023): a sequence first lists
``num_pairs`` key-value pairs, then asks for the values of those keys again, at random later
positions. A model must store every binding it has read and retrieve the right one on request,
which is exactly what a recurrent state of bounded size finds hard and attention finds easy.

Layout of one example of ``seq_len`` input tokens (``n = num_pairs``)::

    position  0   1   2   3  ...  2n-2  2n-1 | 2n ......................................... seq_len-1
    input     k1  v1  k2  v2 ...  kn    vn   | 0  0  kq  0  0  0  kr  0 ... (blank = 0)
    label     -   -   -   -  ...  -     -    | -  -  vq  -  -  -  vr  - ...

* Token 0 is the blank that fills the query region; keys come from ``[1, vocab_size // 2)``,
  values from ``[vocab_size // 2, vocab_size)`` (disjoint, so a value is never read as a key).
* The keys of one example are distinct; values are drawn independently (they may repeat).
* Every key is queried exactly once, in a random order, at ``n`` distinct positions drawn
  uniformly from the query region ``[2n, seq_len)`` (Zoology draws gaps from a power law; a
  uniform draw is simpler and makes far queries as common as near ones).
* ``labels[b, t]`` is the answer *at* position ``t`` (the model must output the value when it
  reads the query key); it is ``-100`` everywhere else. Labels are already aligned: do not
  shift them the Hugging Face way.

``make_mqar(...)`` is a pure function of its arguments and ``seed`` (a private
``torch.Generator``), so training batches are reproducible and a held-out set drawn with another
seed is disjoint in practice from the training stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
BLANK = 0


@dataclass(frozen=True)
class MQARSpec:
    vocab_size: int = 256
    seq_len: int = 64
    num_pairs: int = 8

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {self.num_pairs}")
        n_keys = self.vocab_size // 2 - 1
        if n_keys < self.num_pairs:
            raise ValueError(f"vocab_size {self.vocab_size} gives {n_keys} keys, fewer than num_pairs "
                             f"{self.num_pairs}: use vocab_size >= {2 * (self.num_pairs + 1)}")
        if self.seq_len < 3 * self.num_pairs:
            raise ValueError(f"seq_len {self.seq_len} is too short for {self.num_pairs} pairs and their "
                             f"queries: need seq_len >= 3 * num_pairs = {3 * self.num_pairs}")

    @property
    def key_range(self) -> tuple[int, int]:
        return 1, self.vocab_size // 2

    @property
    def value_range(self) -> tuple[int, int]:
        return self.vocab_size // 2, self.vocab_size


def make_mqar(batch: int, spec: MQARSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` MQAR examples: ``(input_ids, labels)``, two int64 tensors (batch, seq_len)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    g = torch.Generator().manual_seed(int(seed))
    n, T = spec.num_pairs, spec.seq_len
    k_lo, k_hi = spec.key_range
    v_lo, v_hi = spec.value_range
    rows = torch.arange(batch)[:, None]

    # n distinct keys per example: the first n of a random permutation of the key range
    keys = torch.rand(batch, k_hi - k_lo, generator=g).argsort(dim=1)[:, :n] + k_lo
    values = torch.randint(v_lo, v_hi, (batch, n), generator=g)

    input_ids = torch.full((batch, T), BLANK, dtype=torch.long)
    labels = torch.full((batch, T), IGNORE_INDEX, dtype=torch.long)
    input_ids[:, 0:2 * n:2] = keys
    input_ids[:, 1:2 * n:2] = values

    region = T - 2 * n
    positions = torch.rand(batch, region, generator=g).argsort(dim=1)[:, :n] + 2 * n  # distinct slots
    order = torch.rand(batch, n, generator=g).argsort(dim=1)  # which pair each slot asks for
    input_ids[rows, positions] = keys.gather(1, order)
    labels[rows, positions] = values.gather(1, order)
    return input_ids, labels


def recall_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over the query positions: argmax over the whole vocabulary."""
    mask = labels != IGNORE_INDEX
    pred = logits.argmax(dim=-1)
    return int((pred[mask] == labels[mask]).sum()), int(mask.sum())
