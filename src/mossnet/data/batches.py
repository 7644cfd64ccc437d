"""Batches of token windows for training (random, resumable) and evaluation (sequential)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mossnet.data.errors import SplitTooShortError
from mossnet.data.token_store import check_token_ids

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy (and transformers) skips


class TokenBatches:
    """Endless, deterministic, resumable batches of random windows from one token array.

    Each batch is ``(input_ids, labels)``, two int64 tensors of shape (batch_size, seq_len): row
    ``i`` takes a window ``w`` of ``seq_len + 1`` consecutive tokens starting at a random offset;
    ``input_ids[i] = w[:-1]`` and ``labels[i] = w[1:]``. Windows may cross document boundaries
    (the eos between documents tells the model where one ends).

    Batch ``n`` is a pure function of ``(seed, n, rank)`` (given the array, sizes and world
    size): the generator is seeded with ``(seed, n)``, draws ``world_size * batch_size``
    offsets, and rank ``r`` takes rows ``r * batch_size`` to ``(r + 1) * batch_size``. So
    resuming needs only the step counter (``state_dict``), ranks never share windows within a
    step, and ``world_size`` ranks together see exactly the batches that one process with a
    ``world_size`` times larger batch would see.

    ``tokens`` may be a read-only ``np.memmap`` or a sharded split (see ``open_split``): only
    the windows of each batch are read, and a window may span two shards. If ``vocab_size`` is
    given, every id is checked once, up front (``TokenIdError``, a DataError, names the first
    bad one). Too few tokens for one window raise ``SplitTooShortError`` (a DataError too).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        vocab_size: int | None = None,
    ):
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
        if len(tokens) < seq_len + 1:
            raise SplitTooShortError(
                f"the split has {len(tokens)} tokens, too few for one window of seq_len + 1 = {seq_len + 1}: "
                "use a smaller --seq-len or more text")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if vocab_size is not None:
            check_token_ids(tokens, vocab_size)
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.step = 0  # index of the next batch
        self._offsets = np.arange(seq_len + 1)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step`` (does not move the counter)."""
        rng = np.random.default_rng([self.seed, step])
        # Valid window starts: 0 .. len - (seq_len + 1), inclusive.
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.world_size * self.batch_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        windows = np.asarray(self.tokens[mine[:, None] + self._offsets], dtype=np.int64)  # (B, L+1)
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"step": next batch index, "seed": seed}``: plain ints, JSON / checkpoint friendly."""
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next batch will be batch ``state["step"]`` of seed ``state["seed"]``."""
        self.step = int(state["step"])
        self.seed = int(state["seed"])


def sequential_windows(
    tokens: np.ndarray, seq_len: int, stride: int | None = None, batch_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cover a token array with windows for evaluation, scoring every token exactly once.

    Yields ``(input_ids, labels)`` int64 tensors of shape (b, L), b <= ``batch_size``, L <=
    ``seq_len``. Window ``k`` starts at token ``k * stride``. With ``stride == seq_len`` (the
    default) windows just touch; with a smaller stride they overlap, so every prediction after
    the first window has at least ``seq_len - stride`` tokens of context, and the labels of
    tokens an earlier window already scored are set to -100 (ignored by the loss). Summing the
    loss over all yielded labels therefore gives each of tokens ``1 .. n - 1`` exactly once
    (token 0 has no context to be predicted from). The last window may be shorter; it comes
    in a batch of its own.
    """
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    if len(tokens) < 2:
        return
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    scored_until = 1  # tokens before this index have been scored (or cannot be)
    for start in range(0, len(tokens) - 1, stride):
        end = min(start + seq_len + 1, len(tokens))
        window = np.asarray(tokens[start:end], dtype=np.int64)
        labels = window[1:].copy()
        labels[: max(0, scored_until - (start + 1))] = IGNORE_INDEX  # label j is token start+1+j
        scored_until = end
        if pending and len(window) - 1 != len(pending[0][0]):
            yield _stack(pending)
            pending = []
        pending.append((window[:-1], labels))
        if len(pending) == batch_size:
            yield _stack(pending)
            pending = []
        if end == len(tokens):
            break
    if pending:
        yield _stack(pending)


def _stack(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(np.stack([row[0] for row in rows]))
    labels = torch.from_numpy(np.stack([row[1] for row in rows]))
    return inputs, labels
