"""Build a prepared corpus directory: text -> tokenizer -> token shards -> manifest.

This is the whole of ``mossnet prepare-data``; the command line only parses arguments and
prints the result. The text is a built-in corpus (``corpus``, split by fixed held-out lists) or
the user's own files (``inputs``, see ``sources.py``), split by a hash of each document: a
document whose SHA-256, read as a number in [0, 1), is below ``val_fraction`` goes to val, below
``val_fraction + test_fraction`` to test, else to train. The choice depends on the document's
text alone, so adding files never moves the old documents, and exact duplicates (``dedup``
drops them) always land in the same split.

Inputs, options and the tokenizer are checked before anything is written. The output is then
staged and committed (``corpus_dir.py``) so that no directory ever looks complete when it is
not: the shards and the tokenizer are written into ``OUT/.prepare.mossnet-tmp/`` and moved into
place with ``manifest.json`` last; a failure (bad input, Ctrl-C, a full disk) leaves the
previous corpus as it was.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mossnet.data import corpus_dir
from mossnet.data.corpora import SPLITS, load_corpus
from mossnet.data.encode import chunked, encode_chunks
from mossnet.data.errors import DataError, InputError
from mossnet.data.shards import ShardWriter
from mossnet.data.sources import DocumentReader, RawDocument, expand_inputs
from mossnet.data.token_store import (
    DEFAULT_SHARD_BYTES,
    FORMAT,
    read_manifest,
    token_dtype,
)
from mossnet.data.tokenizer import (
    TOKENIZER_DIRNAME,
    build_tokenizer,
    fingerprint_of_file,
    DEFAULT_VOCAB_SIZE,
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    separator_token,
    train_bpe_tokenizer,
)

DEFAULT_CORPUS = "shakespeare"
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_TEST_FRACTION = 0.01
TRAIN, VAL, TEST = range(3)  # split labels, in SPLITS order

Log = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_data(
    out_dir: str | Path,
    corpus: str | None = None,
    tokenizer: str = "bpe",
    vocab_size: int | None = None,
    max_documents: int | None = None,
    progress: bool = True,
    *,
    inputs: list[str] | None = None,
    text_field: str = "text",
    doc_split: str = "file",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    dedup: bool = False,
    strict: bool = False,
    workers: int = 1,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    eos_token: str | None = None,
    force: bool = False,
    log: Log = _stderr,
) -> dict:
    """Prepare a corpus into ``out_dir`` and return its manifest (also in ``manifest.json``).

    ``corpus`` names a built-in corpus (default ``shakespeare`` when no ``inputs``); ``inputs``
    are the user's files, folders or globs. ``tokenizer`` is ``"bpe"`` (trained on the train
    split, ``vocab_size`` tokens, default 4096), ``"gpt2"`` or a path (see ``tokenizer.py``);
    ``eos_token`` the separator after each document (default ``<|endoftext|>`` when the
    tokenizer has it, else its eos). ``max_documents`` keeps the first N documents of each split
    (tests). ``workers`` tokenizer processes; ``shard_bytes`` the largest shard file. ``log``
    receives progress notes and warnings (one line each). Raises a DataError (or an
    OutputDirError) with a one-line message on bad input.
    """
    started = time.perf_counter()
    _check_options(corpus, inputs, tokenizer, vocab_size, max_documents, val_fraction, test_fraction, workers,
                   shard_bytes)
    source = _Source(corpus, inputs, text_field, doc_split, strict, val_fraction, test_fraction, dedup, max_documents)
    tok = None if tokenizer == "bpe" else build_tokenizer(tokenizer, [], vocab_size)
    if tok is not None:
        separator_token(tok, eos_token)  # an unknown --eos-token is refused before anything is written
    elif eos_token not in (None, EOS_TOKEN):
        raise DataError(f"--eos-token {eos_token!r}: the trained BPE's only special token is {EOS_TOKEN}")
    read_dirs = {f"--input {d}": d for d in source.read_dirs}
    if tok is not None and Path(tokenizer).is_dir():
        read_dirs["--tokenizer"] = tokenizer
    out, created = corpus_dir.claim(out_dir, force, read_dirs)
    staging = None
    try:
        staging = corpus_dir.begin_staging(out, log)
        if tok is None:
            tok = _train_bpe(source, vocab_size or DEFAULT_VOCAB_SIZE, log)
        manifest = _write_corpus(source, tok, tokenizer, eos_token, staging, shard_bytes, workers, progress, log)
        manifest["seconds"] = round(time.perf_counter() - started, 1)
        corpus_dir.commit(out, staging, manifest)
        return read_manifest(out)
    except BaseException:
        corpus_dir.abandon(out, created, staging)
        raise


def _check_options(corpus, inputs, tokenizer, vocab_size, max_documents, val_fraction, test_fraction, workers,
                   shard_bytes) -> None:
    if corpus is not None and inputs:
        raise DataError("give either --corpus or --input, not both")
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be at least 1, got {max_documents}")
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"--val-fraction + --test-fraction must be below 1, got {val_fraction + test_fraction}")
    if tokenizer == "bpe" and vocab_size is not None and vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (256 bytes + the separator), got {vocab_size}")
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if shard_bytes < 4:
        raise DataError(f"--shard-size must be at least 4 bytes, got {shard_bytes}")


class _Source:
    """The documents to prepare, each with its split label: a built-in corpus or the inputs."""

    def __init__(self, corpus, inputs, text_field, doc_split, strict, val_fraction, test_fraction, dedup,
                 max_documents):
        self.corpus = corpus if corpus is not None or inputs else DEFAULT_CORPUS
        self.inputs = list(inputs or [])
        self.text_field, self.doc_split, self.strict = text_field, doc_split, strict
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.dedup, self.max_documents = dedup, max_documents
        self.duplicates = 0
        self.reader = DocumentReader(text_field, doc_split, strict)  # checks doc_split now
        if self.inputs:
            expanded = expand_inputs(self.inputs)
            self.files, self.skipped, self.read_dirs = expanded.files, expanded.skipped, expanded.read_dirs
            self.splits = None
            self.total_bytes = sum(f.size for f in self.files)
        else:
            self.files, self.skipped, self.read_dirs = [], [], []
            self.splits = load_corpus(self.corpus, max_documents)
            self.total_bytes = sum(len(d.text.encode("utf-8")) for docs in self.splits.values() for d in docs)

    def label(self, digest: bytes) -> int:
        """The split of a document with SHA-256 ``digest``: its first 8 bytes as u in [0, 1)."""
        u = int.from_bytes(digest[:8], "big") / 2**64
        return VAL if u < self.val_fraction else TEST if u < self.val_fraction + self.test_fraction else TRAIN

    def documents(self, reader: DocumentReader | None = None) -> Iterator[tuple[int, RawDocument]]:
        """``(split label, document)`` in order; duplicates dropped with ``dedup`` (counted)."""
        reader = reader or self.reader
        seen: set[bytes] = set()
        kept = [0, 0, 0]
        self.duplicates = 0
        for label, doc in self._labelled(reader):
            if self.dedup:
                key = hashlib.sha256(doc.data).digest()[:16]
                if key in seen:
                    self.duplicates += 1
                    continue
                seen.add(key)
            if self.max_documents is not None and self.inputs:
                if kept[label] >= self.max_documents:
                    continue
                kept[label] += 1
            yield label, doc

    def _labelled(self, reader: DocumentReader) -> Iterator[tuple[int, RawDocument]]:
        if self.splits is not None:
            for label, split in enumerate(SPLITS):
                for doc in self.splits[split]:
                    data = doc.text.encode("utf-8")
                    yield label, RawDocument(doc.name, doc.text, data, len(data))
            return
        for item in self.files:
            for doc in reader.documents(item):
                yield self.label(hashlib.sha256(doc.data).digest()), doc


def _train_bpe(source: _Source, vocab_size: int, log: Log):
    log(f"training a byte-level BPE of {vocab_size:,} tokens on the train split ...")
    # A reader of its own, so this pass's counts (replaced bytes, empty documents) are not doubled.
    reader = DocumentReader(source.text_field, source.doc_split, source.strict)
    seen = [0]

    def train_texts():
        for label, doc in source.documents(reader):
            if label == TRAIN:
                seen[0] += 1
                yield doc.text

    tok = train_bpe_tokenizer(train_texts(), vocab_size)
    if seen[0] == 0:  # every document went to val or test: they all go to train (see _write_corpus)
        tok = train_bpe_tokenizer((doc.text for _, doc in source.documents(reader)), vocab_size)
    return tok


@dataclass(frozen=True)
class _Encoding:
    """How the corpus is stored: the separator token appended to every document, the id width
    (``dtype``) that holds the tokenizer's ``vocab`` ids, and the tokens per shard file."""

    eos: str
    eos_id: int
    vocab: int
    dtype: np.dtype
    shard_tokens: int
    fingerprint: str


def _write_corpus(source: _Source, tok, tokenizer_name: str, eos_token, staging: Path, shard_bytes: int,
                  workers: int, progress: bool, log: Log) -> dict:
    """Save the tokenizer and the token shards of every split into ``staging``; the manifest."""
    enc = _save_tokenizer(tok, eos_token, staging, shard_bytes)
    shards, stats, names = _tokenize(source, tok.backend_tokenizer, enc, staging, workers, progress)
    shards, stats = _check_splits(source, shards, stats, enc, staging, log)
    return _manifest(source, tokenizer_name, enc, shard_bytes, _split_entries(source, shards, stats, names))


def _save_tokenizer(tok, eos_token, staging: Path, shard_bytes: int) -> _Encoding:
    eos, eos_id = separator_token(tok, eos_token)
    vocab = max(tok.backend_tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    dtype = token_dtype(vocab)
    tok.save_pretrained(str(staging / TOKENIZER_DIRNAME))
    fingerprint = fingerprint_of_file(staging / TOKENIZER_DIRNAME / "tokenizer.json")
    return _Encoding(eos, eos_id, vocab, dtype, max(1, shard_bytes // dtype.itemsize), fingerprint)


def _tokenize(source: _Source, backend, enc: _Encoding, staging: Path, workers: int,
              progress: bool) -> tuple[list, list[dict], list[list[str]]]:
    """Encode every document into its split's shards (``workers`` processes). Per split: the
    shard entries, {"documents", "bytes"}, and the document names (built-in corpora only)."""
    from tqdm.auto import tqdm

    writers = [ShardWriter(staging, split, enc.dtype, enc.shard_tokens, enc.vocab) for split in SPLITS]
    stats = [{"documents": 0, "bytes": 0} for _ in SPLITS]
    names: list[list[str]] = [[] for _ in SPLITS]  # kept for the (small) built-in corpora only

    def items() -> Iterator[tuple[str, int, int]]:
        for label, doc in source.documents():
            stats[label]["documents"] += 1
            stats[label]["bytes"] += len(doc.data)
            if source.splits is not None:
                names[label].append(doc.name)
            yield doc.text, label, doc.disk_bytes

    tokens = 0
    started = time.perf_counter()
    try:
        with tqdm(total=source.total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress,
                  smoothing=0.1) as bar:
            encoded = encode_chunks(chunked(items()), backend, enc.eos_id, enc.dtype, len(SPLITS), workers)
            with closing(encoded):
                for chunk, parts in encoded:
                    for label, ids in enumerate(parts):
                        if ids is not None:
                            writers[label].write(ids)
                            tokens += len(ids)
                    bar.update(chunk.meta)
                    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - started, 1e-9) / 1e3:,.0f}k tok/s",
                                        refresh=False)
            bar.update(max(0, bar.total - bar.n))  # bytes after the last document (trailing blank lines ...)
        return [writer.close() for writer in writers], stats, names
    finally:
        for writer in writers:
            writer.abort()


def _check_splits(source: _Source, shards: list, stats: list[dict], enc: _Encoding, staging: Path,
                  log: Log) -> tuple[list, list[dict]]:
    """Refuse an input without text; move everything into train when train got no document;
    warn about an empty val split, replaced UTF-8 and skipped files."""
    documents = sum(s["documents"] for s in stats)
    reader = source.reader
    if documents == 0:
        empty = f" ({reader.skipped_empty} empty documents skipped)" if reader.skipped_empty else ""
        raise InputError(f"the input holds no text{empty}: nothing to prepare")
    if stats[TRAIN]["documents"] == 0:
        log(f"warning: all {documents} documents were hashed into val/test; with this few documents "
            "everything goes to train (no val or test split)")
        shards, stats = _merge_into_train(staging, shards, stats, enc.dtype, enc.shard_tokens, enc.vocab)
    elif source.inputs and stats[VAL]["documents"] == 0 and source.val_fraction > 0:
        log(f"warning: no document went to the val split ({documents} documents, --val-fraction "
            f"{source.val_fraction}): training will report no validation loss; raise --val-fraction")
    if reader.replaced:
        log(f"warning: replaced {reader.replaced:,} invalid UTF-8 sequences with U+FFFD (--strict refuses them)")
    if source.skipped:
        log(f"note: skipped {len(source.skipped)} files of other types (e.g. {source.skipped[0]})")
    return shards, stats


def _split_entries(source: _Source, shards: list, stats: list[dict], names: list[list[str]]) -> dict:
    """The manifest's ``splits``: tokens, documents, bytes and shards of each non-empty split."""
    splits = {}
    for label, split in enumerate(SPLITS):
        if stats[label]["documents"] == 0:
            continue
        entry = {"tokens": sum(s["tokens"] for s in shards[label]), **stats[label], "shards": shards[label]}
        if source.splits is not None:
            entry["document_names"] = names[label]
        splits[split] = entry
    return splits


def _manifest(source: _Source, tokenizer_name: str, enc: _Encoding, shard_bytes: int, splits: dict) -> dict:
    reader = source.reader
    manifest = {
        "format": FORMAT,
        "corpus": source.corpus if source.splits is not None else None,
        "inputs": source.inputs or None,
        "tokenizer": tokenizer_name,
        "tokenizer_fingerprint": enc.fingerprint,
        "vocab_size": enc.vocab,
        "eos_id": enc.eos_id,
        "eos_token": enc.eos,
        "dtype": enc.dtype.name,
        "shard_bytes": shard_bytes,
        "splits": splits,
        "split_rule": ({"by": "document sha256", "val_fraction": source.val_fraction,
                        "test_fraction": source.test_fraction} if source.inputs else {"by": "held-out names"}),
        "dedup": {"enabled": source.dedup, "removed": source.duplicates},
        "invalid_utf8_replaced": reader.replaced,
        "empty_documents_skipped": reader.skipped_empty,
        "max_documents": source.max_documents,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mossnet_version": _mossnet_version(),
    }
    if source.inputs:
        manifest["reading"] = {"text_field": source.text_field, "doc_split": source.doc_split,
                               "strict": source.strict}
    return manifest


def _merge_into_train(staging: Path, shards: list, stats: list, dtype, shard_tokens: int, vocab: int):
    """Move the val and test streams (in that order) into train, when train got no document."""
    writer = ShardWriter(staging, SPLITS[TRAIN], dtype, shard_tokens, vocab)
    try:
        for label in (VAL, TEST):
            for shard in shards[label]:
                path = staging / shard["file"]
                writer.write(np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<")))
                path.unlink()
        merged = writer.close()
    finally:
        writer.abort()
    total = {key: stats[VAL][key] + stats[TEST][key] for key in ("documents", "bytes")}
    empty = {"documents": 0, "bytes": 0}
    return [merged, [], []], [total, dict(empty), dict(empty)]


def _mossnet_version() -> str:
    # From the installed distribution's metadata: importing mossnet itself would load the model.
    try:
        return importlib.metadata.version("mossnet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
