"""A split stored as several shard files: writing it, and reading it back as one array.

Shards are storage only (see ``token_store``): the token stream of a split is cut into files of
at most ``shard_tokens`` tokens at any position. :class:`ShardedTokens` memory-maps every shard
and indexes like one 1-D array, so the trainer's windows (``TokenBatches``) and the evaluation
windows (``sequential_windows``) work unchanged and may span a shard boundary.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mossnet.data.token_store import shard_name, verify_shard


class ShardedTokens:
    """Read-only 1-D token array over a split's shard files (shape (tokens,), manifest dtype).

    Supports ``len``, ``shape``, ``dtype``, ``ndim``; indexing by an integer, a slice (a view of
    one shard's memmap when it lies inside one shard, else a copy) or an integer array of any
    shape (a gather; the result has the index's shape); ``np.asarray`` (reads everything).

    With ``verify_on_first_read`` each shard's SHA-256 is checked the first time any of its
    tokens is read, before the tokens are returned; a mismatch raises ``ChecksumError``.
    """

    ndim = 1

    def __init__(self, data_dir: str | Path, shards: list[dict], dtype: np.dtype, *,
                 verify_on_first_read: bool = False):
        self.data_dir = Path(data_dir)
        self.shards = [dict(shard) for shard in shards if shard["tokens"] > 0]
        self.dtype = np.dtype(dtype)
        counts = np.array([shard["tokens"] for shard in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # (n_shards + 1,)
        self.shape = (int(self.starts[-1]),)
        self.size = self.shape[0]
        self._maps: list[np.memmap | None] = [None] * len(self.shards)
        self._verified = [not verify_on_first_read] * len(self.shards)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"ShardedTokens({self.data_dir}, {len(self.shards)} shards, {self.size} {self.dtype.name} tokens)"

    def shard(self, index: int) -> np.memmap:
        """Shard ``index`` as a memmap (verified first, if asked for)."""
        if not self._verified[index]:
            with self._lock:
                if not self._verified[index]:
                    verify_shard(self.data_dir, self.shards[index])
                    self._verified[index] = True
        if self._maps[index] is None:
            shard = self.shards[index]
            self._maps[index] = np.memmap(self.data_dir / shard["file"], dtype=self.dtype, mode="r",
                                          shape=(shard["tokens"],))
        return self._maps[index]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + self.size if key < 0 else int(key)
            if not 0 <= i < self.size:
                raise IndexError(f"index {int(key)} is out of bounds for {self.size} tokens")
            s = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.shard(s)[i - self.starts[s]]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.size)
            if step != 1:
                return self[start:stop][::step] if step > 0 else self[np.arange(start, stop, step)]
            return self._range(start, max(start, stop))
        index = np.asarray(key)
        if index.dtype.kind not in "iu":
            raise TypeError(f"ShardedTokens indices must be integers, slices or integer arrays, not {index.dtype}")
        return self._gather(index)

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        for s in range(max(first, 0), len(self.shards)):
            lo, hi = self.starts[s], self.starts[s + 1]
            if lo >= stop:
                break
            pieces.append(self.shard(s)[max(start, lo) - lo : min(stop, hi) - lo])
        if not pieces:
            return np.zeros(0, dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _gather(self, index: np.ndarray) -> np.ndarray:
        if index.ndim == 2 and index.shape[1] > 1 and len(index):
            # The trainer's case: each row a run of consecutive positions (a window). Reading
            # each as a slice is several times faster than a per-element gather.
            starts, width = index[:, 0].astype(np.int64), index.shape[1]
            if (starts.min() >= 0 and starts.max() + width <= self.size
                    and np.array_equal(index, starts[:, None] + np.arange(width))):
                return np.stack([self._range(int(start), int(start) + width) for start in starts])
        flat = index.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + self.size, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= self.size):
            raise IndexError(f"index out of bounds for {self.size} tokens")
        which = np.searchsorted(self.starts, flat, side="right") - 1  # shard of each index
        out = np.empty(flat.shape, dtype=self.dtype)
        for s in np.unique(which):
            picked = which == s
            out[picked] = self.shard(int(s))[flat[picked] - self.starts[s]]
        return out.reshape(index.shape)

    def __array__(self, dtype=None, copy=None):
        whole = self._range(0, self.size)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def iter_blocks(self, size: int) -> Iterator[np.ndarray]:
        """The tokens in order, in blocks of at most ``size`` that never span a shard."""
        for s in range(len(self.shards)):
            data = self.shard(s)
            for start in range(0, len(data), size):
                yield data[start : start + size]


class ShardWriter:
    """Writes one split's token stream as shards ``{split}_00000.bin ...`` into ``directory``.

    ``write`` takes 1-D id arrays in stream order; a shard is closed (flushed, fsynced) when it
    holds ``shard_tokens`` tokens and the rest goes to the next. ``close`` returns the shard
    list for the manifest: ``[{"file", "tokens", "sha256"}, ...]`` (empty if nothing was
    written: a split with no tokens has no file).
    """

    def __init__(self, directory: str | Path, split: str, dtype: np.dtype, shard_tokens: int, vocab_size: int):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.directory = Path(directory)
        self.split = split
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shard_tokens = shard_tokens
        self.vocab_size = vocab_size
        self.shards: list[dict] = []
        self.tokens = 0
        self._file = None
        self._digest = None
        self._count = 0

    def write(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range 0..{self.vocab_size - 1}: {ids.min()}..{ids.max()}")
        data = ids.astype(self.dtype, copy=False)
        while data.size:
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._count
            piece, data = data[:room], data[room:]
            raw = piece.tobytes()
            self._file.write(raw)
            self._digest.update(raw)
            self._count += piece.size
            self.tokens += piece.size
            if self._count == self.shard_tokens:
                self._finish()

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._file = (self.directory / name).open("wb")
        self._digest = hashlib.sha256()
        self._count = 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.shards[-1].update(tokens=self._count, sha256=self._digest.hexdigest())

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        """Close without finishing (the staging folder is deleted by the caller)."""
        if self._file is not None:
            self._file.close()
            self._file = None
