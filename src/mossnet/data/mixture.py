"""Training on several prepared corpora at once: ``mossnet train --data A:0.7,B:0.3``.

A mixture keeps the rules of :class:`~mossnet.data.batches.TokenBatches`: batch ``n`` is a pure
function of ``(seed, n)``; it draws ``world_size * batch_size`` rows and rank ``r`` takes its
slice, so data-parallel training equals one process accumulating the same micro-batches, and
resuming needs only the step counter. Each row first picks a source with probability equal to
its (normalised) weight, then a random window of that source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mossnet.errors import DataError

from .batches import TokenBatches
from .token_store import check_token_ids


@dataclass(frozen=True)
class DataSource:
    path: str
    weight: float


def parse_data_sources(spec: str) -> list[DataSource]:
    """``"A:0.7,B:0.3"`` -> two sources with weights 0.7 and 0.3 (normalised to sum to 1);
    ``"DIR"`` -> one source of weight 1. A path is split at its *last* ``:``, and only when what
    follows is a number, so ``"C:/data"`` or ``"a:b"`` stay paths.

    >>> [(s.path, s.weight) for s in parse_data_sources("web:3,books:1")]
    [('web', 0.75), ('books', 0.25)]
    >>> parse_data_sources("runs/demo/data")[0].weight
    1.0
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise DataError("--data is empty: pass DIR or DIR_A:WEIGHT,DIR_B:WEIGHT")
    sources = []
    for part in parts:
        path, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep and head:
            try:
                weight = float(tail)
                path = head
            except ValueError:
                pass
        if not np.isfinite(weight) or weight <= 0:
            raise DataError(f"--data {part}: the weight must be a finite number > 0, got {tail}")
        sources.append((path, weight))
    paths = [p for p, _ in sources]
    if len(set(paths)) != len(paths):
        raise DataError(f"--data names a directory twice: {spec}")
    total = sum(w for _, w in sources)
    return [DataSource(p, w / total) for p, w in sources]


class MixtureBatches(TokenBatches):
    """Endless, deterministic, resumable batches drawn from several token arrays by weight.

    ``TokenBatches`` with another ``batch``: the iteration and the resumable position
    (``__next__``, ``state_dict``, ``load_state_dict``) are inherited. ``sources`` are 1-D token
    arrays, ``weights`` their probabilities. ``last_sources`` holds, after each batch, the source
    index of each of this rank's rows.
    """

    def __init__(self, sources: list[np.ndarray], weights: list[float], batch_size: int, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, vocab_size: int | None = None):
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per source")
        for i, tokens in enumerate(sources):
            if len(tokens) < seq_len + 1:
                raise DataError(f"source {i} of the mixture has {len(tokens)} tokens, fewer than one window "
                                f"(seq_len + 1 = {seq_len + 1})")
            if vocab_size is not None:
                check_token_ids(tokens, vocab_size)
        self.sources = sources
        self.probs = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        self.last_sources = np.zeros(batch_size, dtype=np.int64)
        self._offsets = np.arange(seq_len + 1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step`` (does not move the counter)."""
        rng = np.random.default_rng([self.seed, step])
        n = self.world_size * self.batch_size
        which = rng.choice(len(self.sources), size=n, p=self.probs)
        spans = np.asarray([len(t) - self.seq_len for t in self.sources], dtype=np.int64)
        starts = np.minimum((rng.random(n) * spans[which]).astype(np.int64), spans[which] - 1)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        rows = [np.asarray(self.sources[s][o + self._offsets], dtype=np.int64)
                for s, o in zip(which[lo:hi], starts[lo:hi])]
        self.last_sources = which[lo:hi]
        windows = torch.from_numpy(np.stack(rows))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
