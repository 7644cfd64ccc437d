"""What a run trains and validates on: one prepared corpus, or a weighted mixture of them
(``--data A:0.7,B:0.3``), opened once; and the micro-batches of each optimizer step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mossnet.errors import DataError

from . import checkpoint as ckpt

Say = Callable[[str], None]


@dataclass
class ValSet:
    source: str  # the corpus' directory name (reported per source in a mixture)
    split: str  # "val", or "test" when a corpus has no val split
    tokens: np.ndarray
    bytes: int


@dataclass
class TrainingData:
    sources: list  # mossnet.data.mixture.DataSource, weights normalised
    data_dir: str  # the first source: the run's tokenizer and sample prompt come from it
    manifest: dict[str, Any]  # the first source's
    vocab_size: int
    eos_id: int | None
    train_sets: list[np.ndarray]  # one 1-D token array per source
    val_sets: list[ValSet]
    identity: str  # content identity of the data (``checkpoint.data_identity``), checked on resume

    @property
    def train_tokens(self) -> np.ndarray:
        return self.train_sets[0]

    @property
    def primary_val(self) -> ValSet | None:
        return self.val_sets[0] if self.val_sets else None


def load_training_data(spec: str, seq_len: int, warn: Say, say: Say) -> TrainingData:
    """Open the corpora ``spec`` names, checking that they share one tokenizer and that every
    train split holds at least one window; a validation split too short for one window is
    dropped with a warning (training then validates on the others, or on nothing)."""
    from mossnet.data import read_manifest
    from mossnet.data.mixture import parse_data_sources

    sources = parse_data_sources(spec)
    manifests = [read_manifest(s.path) for s in sources]
    first = sources[0].path
    for source, manifest in zip(sources[1:], manifests[1:]):
        if tokenizer_id(source.path, manifest) != tokenizer_id(first, manifests[0]):
            raise DataError(f"--data mixes corpora prepared with different tokenizers: {first} and "
                            f"{source.path}; prepare both with the same --tokenizer")
    checks = [_verify(s.path, m, say) for s, m in zip(sources, manifests)]
    train_sets = [_open_train(s.path, seq_len, c) for s, c in zip(sources, checks)]
    val_sets = [v for v in (_open_val(s.path, m, seq_len, warn, c) for s, m, c in zip(sources, manifests, checks))
                if v]
    identities = [ckpt.data_identity(m) for m in manifests]
    identity = identities[0] if len(identities) == 1 else ckpt.mixture_identity(identities, [s.weight for s in sources])
    if len(sources) > 1:
        say("data mixture: " + ", ".join(f"{s.path} ({s.weight:.0%}, {len(t):,} train tokens)"
                                        for s, t in zip(sources, train_sets)))
    return TrainingData(sources, first, manifests[0], int(manifests[0]["vocab_size"]), manifests[0].get("eos_id"),
                        train_sets, val_sets, identity)


def _verify(path: str, manifest: dict[str, Any], say: Say) -> bool | str:
    """Check the corpus' manifest and checksums before training on it, and say what it cost.
    Returns how its splits are opened: already verified (False), or each shard on first read
    (a corpus too large to hash at start)."""
    from mossnet.data import verify_corpus

    splits = [name for name in ("train", "val", "test") if name in manifest.get("splits", {})]
    summary = verify_corpus(path, splits, progress=False)
    say(summary["message"])
    return summary["open_verify"]


def _open_train(path: str, seq_len: int, verify: bool | str = False) -> np.ndarray:
    from mossnet.data import open_split

    tokens = open_split(path, "train", verify=verify)
    if len(tokens) < seq_len + 1:
        raise DataError(f"the train split of {path} has {len(tokens)} tokens, fewer than "
                        f"one sequence (seq_len={seq_len} + 1)")
    return tokens


def _open_val(path: str, manifest: dict[str, Any], seq_len: int, warn: Say, verify: bool | str = False) -> ValSet | None:
    from mossnet.data import open_split

    splits = manifest.get("splits", {})
    split = "val" if "val" in splits else ("test" if "test" in splits else None)
    if split is None:
        warn(f"{path} has no validation split: no validation loss will be reported for it")
        return None
    tokens = open_split(path, split, verify=verify)
    if len(tokens) < seq_len + 1:
        warn(f"the {split} split of {path} has {len(tokens)} tokens, fewer than one window "
             f"(seq_len={seq_len} + 1): no validation loss will be reported for it")
        return None
    return ValSet(Path(path).name, split, tokens, int(splits.get(split, {}).get("bytes", 0)))


def tokenizer_id(data_dir: str, manifest: dict[str, Any]) -> str:
    """What names a corpus' tokenizer: the manifest's fingerprint, else its tokenizer.json's hash."""
    fingerprint = manifest.get("tokenizer_fingerprint")
    if fingerprint:
        return str(fingerprint)
    f = Path(data_dir) / "tokenizer" / "tokenizer.json"
    return ckpt.sha256(f) if f.is_file() else f"vocab {manifest.get('vocab_size')}"


class MicroBatches:
    """The micro-batches of each optimizer step, independent of how they are spread over ranks.

    Step ``n`` uses a global batch of ``world_size * grad_accum`` micro-batches; micro-batch
    ``m = rank * grad_accum + a`` is rows ``m * batch_size ...`` of batch ``n`` drawn for
    ``world_size * grad_accum`` "ranks" (``TokenBatches``, or ``MixtureBatches`` for several
    sources). So 2 processes accumulating 1 micro-batch and 1 process accumulating 2 see exactly
    the same data, in the same micro-batches (and the router statistics, which are per
    micro-batch, agree too)."""

    def __init__(self, sources: list, weights: list[float], batch_size: int, seq_len: int, seed: int,
                 grad_accum: int, rank: int, world_size: int, vocab_size: int | None):
        from mossnet.data import TokenBatches
        from mossnet.data.mixture import MixtureBatches

        n = world_size * grad_accum

        def stream(a: int):
            kw = dict(seed=seed, rank=rank * grad_accum + a, world_size=n, vocab_size=vocab_size if a == 0 else None)
            if len(sources) == 1:
                return TokenBatches(sources[0], batch_size, seq_len, **kw)
            return MixtureBatches(sources, weights, batch_size, seq_len, **kw)

        self.streams = [stream(a) for a in range(grad_accum)]
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self):
        """The next micro-batch of this rank (cycling through its ``grad_accum`` streams)."""
        batch = next(self.streams[self._next])
        self._next = (self._next + 1) % len(self.streams)
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self._next != 0:
            raise RuntimeError("data position saved in the middle of an optimizer step")
        return self.streams[0].state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stream in self.streams:
            stream.load_state_dict(state)
        self._next = 0
