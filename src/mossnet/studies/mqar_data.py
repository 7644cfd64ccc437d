"""Multi-query associative recall (MQAR), a seeded generator of our own.

The task comes from Zoology (Arora et al., 2023, "Zoology: measuring and improving recall in
efficient language models"): a sequence first lists ``num_pairs`` key-value pairs, then asks for
the values of those keys again, at later positions. A model must store every binding it has
read and retrieve the right one on request, which is exactly what a recurrent state of bounded
size finds hard and attention finds easy.

Layout of one example of ``seq_len`` input tokens (``n = num_pairs``)::

    position  0   1   2   3  ...  2n-2  2n-1 | 2n ......................................... seq_len-1
    input     k1  v1  k2  v2 ...  kn    vn   | f  f  kq  f  f  f  kr  f ... (f = filler)
    label     -   -   -   -  ...  -     -    | -  -  vq  -  -  -  vr  - ...

The defaults are Zoology's generator (``MQARSpec`` fields, each an option):

* keys are distinct tokens of ``[1, vocab_size // 2)``; values come from
  ``[vocab_size // 2, vocab_size)`` (disjoint, so a value is never read as a key), drawn
  **without replacement** (``values_replace=False``), vocabulary **8,192**;
* **power-law query gaps** (``power_a=0.01``): the query region has ``(seq_len - 2n) // 2`` slots
  at even offsets; slot ``j`` (0-based) has weight ``(j + 1) ** (power_a - 1)``, and ``n``
  distinct slots are drawn one after the other without replacement; the i-th drawn slot asks
  for the i-th pair. Most queries therefore sit close to the pairs, as repeated bigrams do in
  text. Needs ``seq_len >= 4 n``. ``power_a=None`` draws ``n`` distinct positions of the whole
  region uniformly, in random order (``seq_len >= 3 n``);
* **random filler** (``random_filler=True``): every position that is neither a pair nor a query
  holds a uniform token of ``[0, vocab_size)``; ``False`` leaves the blank token 0 there.

``labels[b, t]`` is the answer *at* position ``t`` (the model reads the query key and must output
its value); it is ``-100`` everywhere else. Labels are already aligned: do not shift them the
Hugging Face way.

The generator of the earlier grids is ``MQARSpec(values_replace=True, power_a=None,
random_filler=False)``, which draws exactly what it drew then (:data:`UNIFORM_OPTIONS`).

Training mixture: :data:`ZOOLOGY_TRAIN_MIXTURE` lists Zoology's (length, pairs, examples) slices;
:func:`make_mqar_mixture` draws each example's slice with probability proportional to its
examples and pads every example to the longest length (blank inputs, ``-100`` labels: a causal
model's answers before the padding do not depend on it).

``make_mqar(...)`` is a pure function of its arguments and ``seed`` (a private
``torch.Generator``), so training batches are reproducible and a held-out set drawn with another
seed is disjoint in practice from the training stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
BLANK = 0

# Zoology's MQAR training set: (sequence length, pairs, examples). The examples set how often
# each slice is drawn (5 : 1 : 1 : 1 : 1); the easy (64, 4) slice dominates.
ZOOLOGY_TRAIN_MIXTURE: tuple[tuple[int, int, int], ...] = (
    (64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000))
MIXTURES = {"zoology": ZOOLOGY_TRAIN_MIXTURE}
UNIFORM_OPTIONS = dict(values_replace=True, power_a=None, random_filler=False)
GENERATORS = {"zoology": {}, "uniform": UNIFORM_OPTIONS}


@dataclass(frozen=True)
class MQARSpec:
    vocab_size: int = 8192
    seq_len: int = 64
    num_pairs: int = 4
    values_replace: bool = False
    power_a: float | None = 0.01
    random_filler: bool = True

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {self.num_pairs}")
        n_keys = self.vocab_size // 2 - 1
        if n_keys < self.num_pairs:
            raise ValueError(f"vocab_size {self.vocab_size} gives {n_keys} keys, fewer than num_pairs "
                             f"{self.num_pairs}: use vocab_size >= {2 * (self.num_pairs + 1)}")
        n_values = self.vocab_size - self.vocab_size // 2
        if not self.values_replace and n_values < self.num_pairs:
            raise ValueError(f"vocab_size {self.vocab_size} gives {n_values} values, fewer than num_pairs "
                             f"{self.num_pairs} drawn without replacement")
        factor = 3 if self.power_a is None else 4
        if self.seq_len < factor * self.num_pairs:
            raise ValueError(f"seq_len {self.seq_len} is too short for {self.num_pairs} pairs and their "
                             f"queries: need seq_len >= {factor} * num_pairs = {factor * self.num_pairs}")
        if self.power_a is not None and not self.power_a > 0:
            raise ValueError(f"power_a must be > 0 (or None for uniform positions), got {self.power_a}")

    @property
    def key_range(self) -> tuple[int, int]:
        return 1, self.vocab_size // 2

    @property
    def value_range(self) -> tuple[int, int]:
        return self.vocab_size // 2, self.vocab_size

    @property
    def slice_name(self) -> str:
        return slice_name(self.seq_len, self.num_pairs)


def slice_name(seq_len: int, num_pairs: int) -> str:
    """The name of a (length, pairs) slice in results and reports: ``"128x8"``."""
    return f"{seq_len}x{num_pairs}"


def slice_key(name: str) -> tuple[int, int]:
    """(length, pairs) of a slice name, for ordering slices (JSON keeps keys sorted as text)."""
    T, n = name.split("x")
    return int(T), int(n)


def generator_options(name: str) -> dict:
    """The ``MQARSpec`` options of a named generator ("zoology" or "uniform")."""
    if name not in GENERATORS:
        raise ValueError(f"unknown MQAR generator {name!r}; choose from {sorted(GENERATORS)}")
    return dict(GENERATORS[name])


def _first_of_permutation(batch: int, width: int, n: int, g: torch.Generator) -> torch.Tensor:
    """(batch, n): the first ``n`` entries of a random permutation of ``range(width)`` per row,
    i.e. ``rand(batch, width).argsort(dim=1)[:, :n]``. ``topk`` finds the same indices without
    sorting the whole row: 20x faster at width 4,096, where the full sort made generating a
    training batch slower than the GPU step it feeds."""
    return torch.rand(batch, width, generator=g).topk(n, dim=1, largest=False, sorted=True).indices


def _distinct(batch: int, lo: int, hi: int, n: int, g: torch.Generator) -> torch.Tensor:
    """(batch, n) distinct tokens of [lo, hi) per row: the first n of a random permutation."""
    return _first_of_permutation(batch, hi - lo, n, g) + lo


def power_law_weights(space: int, power_a: float) -> torch.Tensor:
    """(space,) float64 weights of the query slots: ``(j + 1) ** (power_a - 1)``, normalised."""
    w = torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return w / w.sum()


def _query_positions(batch: int, spec: MQARSpec, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (batch, n), which pair each position asks for (batch, n))."""
    n, T = spec.num_pairs, spec.seq_len
    if spec.power_a is None:
        region = T - 2 * n
        positions = _first_of_permutation(batch, region, n, g) + 2 * n  # distinct slots
        order = torch.rand(batch, n, generator=g).argsort(dim=1)
        return positions, order
    space = (T - 2 * n) // 2
    weights = power_law_weights(space, spec.power_a).expand(batch, space)
    slots = torch.multinomial(weights, n, replacement=False, generator=g)  # sequential draws, like np.random.choice
    return 2 * n + 2 * slots, torch.arange(n).expand(batch, n)


def make_mqar(batch: int, spec: MQARSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` MQAR examples: ``(input_ids, labels)``, two int64 tensors (batch, seq_len)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    g = torch.Generator().manual_seed(int(seed))
    n, T = spec.num_pairs, spec.seq_len
    k_lo, k_hi = spec.key_range
    v_lo, v_hi = spec.value_range
    rows = torch.arange(batch)[:, None]

    keys = _distinct(batch, k_lo, k_hi, n, g)
    if spec.values_replace:
        values = torch.randint(v_lo, v_hi, (batch, n), generator=g)
    else:
        values = _distinct(batch, v_lo, v_hi, n, g)

    input_ids = torch.full((batch, T), BLANK, dtype=torch.long)
    labels = torch.full((batch, T), IGNORE_INDEX, dtype=torch.long)
    input_ids[:, 0:2 * n:2] = keys
    input_ids[:, 1:2 * n:2] = values

    positions, order = _query_positions(batch, spec, g)
    input_ids[rows, positions] = keys.gather(1, order)
    labels[rows, positions] = values.gather(1, order)
    if spec.random_filler:
        filler = torch.randint(0, spec.vocab_size, (batch, T), generator=g)
        is_filler = torch.ones(batch, T, dtype=torch.bool)
        is_filler[:, :2 * n] = False
        is_filler[rows, positions] = False
        input_ids = torch.where(is_filler, filler, input_ids)
    return input_ids, labels


def mixture_specs(slices, vocab_size: int, **options) -> list[MQARSpec]:
    """One ``MQARSpec`` per (length, pairs, examples) slice."""
    return [MQARSpec(vocab_size=vocab_size, seq_len=T, num_pairs=n, **options) for T, n, _ in slices]


def make_mqar_mixture(batch: int, slices, seed: int, vocab_size: int = 8192,
                      **options) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` examples of a mixture of slices ((length, pairs, examples) triples), each drawn
    with probability proportional to its examples and padded to the longest length.

    Returns (input_ids, labels) int64 (batch, max length) and (batch,) the slice of each row."""
    specs = mixture_specs(slices, vocab_size, **options)
    T = max(s.seq_len for s in specs)
    g = torch.Generator().manual_seed(int(seed))
    weights = torch.tensor([float(m) for _, _, m in slices], dtype=torch.float64)
    which = torch.multinomial(weights, batch, replacement=True, generator=g)
    input_ids = torch.full((batch, T), BLANK, dtype=torch.long)
    labels = torch.full((batch, T), IGNORE_INDEX, dtype=torch.long)
    for i, spec in enumerate(specs):
        rows = (which == i).nonzero()[:, 0]
        if len(rows):
            x, y = make_mqar(len(rows), spec, seed=(int(seed) * 1_000_003 + 7919 * (i + 1)) % (2**63 - 1))
            input_ids[rows, :spec.seq_len] = x
            labels[rows, :spec.seq_len] = y
    return input_ids, labels, which


def recall_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over the query positions: argmax over the whole vocabulary."""
    mask = labels != IGNORE_INDEX
    pred = logits.argmax(dim=-1)
    return int((pred[mask] == labels[mask]).sum()), int(mask.sum())
