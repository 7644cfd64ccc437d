"""Tokenizing chunks of documents, in this process or in ``--workers`` worker processes.

A chunk is a list of documents (about 1 MB of text) with the split each goes to. Its result is,
for every split, the ids of its documents in order with the separator after each. Workers are
processes, each running the Rust tokenizer on one thread (``TOKENIZERS_PARALLELISM=false``), so
``--workers N`` uses N cores for tokenization, and the reader (this process) keeps at most
``2 N + 2`` chunks in flight: memory stays bounded whatever the corpus size. Results come back
in submission order, so the output is byte-identical for any number of workers.

Worker processes rather than the tokenizer's own thread pool: the pool's size is fixed the first
time it is used in a process (training a BPE already uses it), and processes keep reading,
tokenizing and writing overlapped without any of them holding the GIL for the others.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

CHUNK_BYTES = 1 << 20  # text per chunk: large enough that a task's overhead is negligible


@dataclass
class Chunk:
    """Documents to tokenize: ``texts`` and, for each, the index of its split in ``labels``
    (uint8, shape (len(texts),)); ``meta`` travels with it untouched (for the progress bar)."""

    texts: list[str]
    labels: np.ndarray
    meta: object = None


def encode_chunk(tokenizer: Tokenizer, texts: list[str], labels: np.ndarray, eos_id: int, dtype: np.dtype,
                 n_splits: int) -> list[np.ndarray | None]:
    """Per split index, the ids of the chunk's documents of that split, each followed by
    ``eos_id``, as one ``dtype`` array (None for a split with no document here).

    ``tokenizer`` must have ``encode_special_tokens`` set: a document that contains the text
    "<|endoftext|>" is encoded as that text, not as a document break.
    """
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast: tokenizers >= 0.20.2
    encodings = encode(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=dtype, count=total)
    ends = np.cumsum(lengths + 1) - 1  # position of each document's separator
    stream = np.empty(total + len(texts), dtype=dtype)
    is_text = np.ones(len(stream), dtype=bool)
    is_text[ends] = False
    stream[is_text] = flat
    stream[ends] = eos_id
    if len(labels) and (labels == labels[0]).all():
        return [stream if s == labels[0] else None for s in range(n_splits)]
    per_token = np.repeat(labels, lengths + 1)
    return [stream[per_token == s] if (labels == s).any() else None for s in range(n_splits)]


def _for_documents(tokenizer_json: str) -> Tokenizer:
    """A copy of the tokenizer set up for whole documents: no truncation or padding (some
    tokenizer.json files carry a max_length that would silently cut documents), and special-token
    text encoded as text."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_special_tokens = True
    return tokenizer


# Worker-process state: set once by _init_worker.
_WORKER: dict = {}


def _init_worker(tokenizer_json: str, eos_id: int, dtype: str, n_splits: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=_for_documents(tokenizer_json), eos_id=eos_id, dtype=np.dtype(dtype), n_splits=n_splits)


def _encode_in_worker(texts: list[str], labels: np.ndarray) -> list[np.ndarray | None]:
    w = _WORKER
    return encode_chunk(w["tokenizer"], texts, labels, w["eos_id"], w["dtype"], w["n_splits"])


@contextmanager
def _sequential_tokenizer():
    """TOKENIZERS_PARALLELISM=false while the block runs (the Rust side reads it at each call)."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def encode_chunks(chunks: Iterator[Chunk], tokenizer: Tokenizer, eos_id: int, dtype: np.dtype, n_splits: int,
                  workers: int = 1) -> Iterator[tuple[Chunk, list[np.ndarray | None]]]:
    """``(chunk, per-split ids)`` for every chunk, in order (see :func:`encode_chunk`).

    ``workers == 1`` tokenizes here on one thread; more start that many worker processes. The
    chunk handed back has its texts dropped (only ``labels`` and ``meta`` are kept).
    """
    dtype = np.dtype(dtype)
    if workers <= 1:
        local = _for_documents(tokenizer.to_str())
        with _sequential_tokenizer():
            for chunk in chunks:
                ids = encode_chunk(local, chunk.texts, chunk.labels, eos_id, dtype, n_splits)
                chunk.texts = []
                yield chunk, ids
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # Set before forking: the tokenizer then neither warns about the fork nor uses threads in
    # the workers.
    with _sequential_tokenizer():
        pool = context.Pool(workers, initializer=_init_worker,
                            initargs=(tokenizer.to_str(), eos_id, dtype.str, n_splits))
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_encode_in_worker, (chunk.texts, chunk.labels))))
            chunk.texts = []
            while len(pending) >= 2 * workers + 2:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def chunked(items: Iterator[tuple[str, int, int]], chunk_bytes: int = CHUNK_BYTES,
            max_documents: int = 4096) -> Iterator[Chunk]:
    """Group ``(text, label, weight)`` items into chunks of about ``chunk_bytes`` characters of
    text; a chunk's ``meta`` is the sum of its items' weights (the progress bar's bytes)."""
    texts: list[str] = []
    labels: list[int] = []
    weight = size = 0
    for text, label, item_weight in items:
        texts.append(text)
        labels.append(label)
        weight += item_weight
        size += len(text)
        if size >= chunk_bytes or len(texts) >= max_documents:
            yield Chunk(texts, np.array(labels, dtype=np.uint8), weight)
            texts, labels, weight, size = [], [], 0, 0
    if texts:
        yield Chunk(texts, np.array(labels, dtype=np.uint8), weight)
