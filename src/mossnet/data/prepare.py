"""Build a prepared corpus directory: text -> tokenizer -> token shards -> manifest.

This is the whole of ``mossnet prepare-data``; the command line only parses arguments and
prints the result. The text is a built-in corpus (``corpus``, split by fixed held-out lists) or
the user's own files (``inputs``, see ``sources.py``), split by a hash of each document: a
document whose SHA-256, read as a number in [0, 1), is below ``val_fraction`` goes to val, below
``val_fraction + test_fraction`` to test, else to train. The choice depends on the document's
text alone, so adding files never moves the old documents, and exact duplicates (``dedup``
drops them) always land in the same split.

The output is staged and committed so that no directory ever looks complete when it is not:

1. inputs, options and the tokenizer are checked before anything is written;
2. the output directory is claimed (``mossnet.rundir.ownership``: a new or empty folder, or a
   prepared corpus with ``force``; never anyone else's files);
3. shards and tokenizer are written into ``OUT/.prepare.mossnet-tmp/``;
4. the commit deletes the old manifest, moves the new files into place, removes the old
   corpus's files that the new one does not reuse, and writes ``manifest.json`` last.

A failure (bad input, Ctrl-C, a full disk) before step 4 leaves the previous corpus as it was
and removes the staging folder (and ``OUT`` itself if this run created it); a crash inside
step 4 leaves a directory without a manifest, which is never read as a corpus, and the next
run with ``--force`` recognises its files as its own (from the journal in the staging folder).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mossnet.data.corpora import SPLITS, load_corpus
from mossnet.data.encode import chunked, encode_chunks
from mossnet.data.errors import DataError, InputError
from mossnet.data.shards import ShardWriter
from mossnet.data.sources import DocumentReader, RawDocument, expand_inputs
from mossnet.data.token_store import (
    DEFAULT_SHARD_BYTES,
    FORMAT,
    MANIFEST_NAME,
    is_prepared_dir,
    read_manifest,
    shard_name,
    token_dtype,
    write_manifest,
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
from mossnet.errors import OutputDirError

DEFAULT_CORPUS = "shakespeare"
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_TEST_FRACTION = 0.01
STAGING = ".prepare.mossnet-tmp"
STAGING_MARK = "mossnet-prepare-staging"  # inside STAGING: proves the folder is ours
JOURNAL = "commit.json"  # inside STAGING: the names a commit is moving into OUT
RESERVED = (MANIFEST_NAME, TOKENIZER_DIRNAME, STAGING, *(f"{s}.bin" for s in SPLITS),
            *(shard_name(s, 0) for s in SPLITS))
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
    out, created = _claim(out_dir, force, read_dirs)
    staging = out / STAGING
    try:
        _clear_leftover(out, log)
        staging.mkdir()
        (staging / STAGING_MARK).write_text("staging folder of mossnet prepare-data; safe to delete\n")
        if tok is None:
            tok = _train_bpe(source, vocab_size or DEFAULT_VOCAB_SIZE, log)
        manifest = _write_corpus(source, tok, tokenizer, eos_token, staging, shard_bytes, workers, progress, log)
        manifest["seconds"] = round(time.perf_counter() - started, 1)
        _commit(out, staging, manifest)
        return read_manifest(out)
    except BaseException:
        if not (staging / JOURNAL).exists():
            shutil.rmtree(staging, ignore_errors=True)
        # else the commit had begun: its journal stays, so that the next run (with --force)
        # knows which files in OUT are ours and clears them.
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
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


def _claim(out_dir, force: bool, read_dirs: dict) -> tuple[Path, bool]:
    from mossnet.rundir.ownership import claim_output_dir

    out = Path(out_dir)
    created = not out.exists()
    out = claim_output_dir(
        out, force=force, owned=_ours, reserved=RESERVED, reuse_owned=False,
        owned_refusal="already holds a prepared corpus; pass --force to replace it", read_dirs=read_dirs,
    )
    return out, created


def _ours(path: Path) -> bool:
    """A prepared corpus, or what an interrupted commit of one left (its staging journal)."""
    return is_prepared_dir(path) or (path / STAGING / STAGING_MARK).is_file()


def _clear_leftover(out: Path, log: Log) -> None:
    staging = out / STAGING
    if not staging.exists():
        return
    if not (staging / STAGING_MARK).is_file():
        raise OutputDirError(f"{staging} exists and was not written by mossnet prepare-data: move it away")
    journal = staging / JOURNAL
    if journal.is_file() and not (out / MANIFEST_NAME).exists():
        # An interrupted commit: the files it moved are ours; remove them with the rest.
        for name in json.loads(journal.read_text())["names"]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    shutil.rmtree(staging)
    log(f"removed {staging}, left over from an interrupted prepare-data")


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


def _write_corpus(source: _Source, tok, tokenizer_name: str, eos_token, staging: Path, shard_bytes: int,
                  workers: int, progress: bool, log: Log) -> dict:
    from tqdm.auto import tqdm

    eos, eos_id = separator_token(tok, eos_token)
    backend = tok.backend_tokenizer
    vocab = max(backend.get_vocab(with_added_tokens=True).values()) + 1
    dtype = token_dtype(vocab)
    tok.save_pretrained(str(staging / TOKENIZER_DIRNAME))
    fingerprint = fingerprint_of_file(staging / TOKENIZER_DIRNAME / "tokenizer.json")
    shard_tokens = max(1, shard_bytes // dtype.itemsize)
    writers = [ShardWriter(staging, split, dtype, shard_tokens, vocab) for split in SPLITS]
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
            encoded = encode_chunks(chunked(items()), backend, eos_id, dtype, len(SPLITS), workers)
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
        shards = [writer.close() for writer in writers]
    finally:
        for writer in writers:
            writer.abort()
    documents = sum(s["documents"] for s in stats)
    reader = source.reader
    if documents == 0:
        empty = f" ({reader.skipped_empty} empty documents skipped)" if reader.skipped_empty else ""
        raise InputError(f"the input holds no text{empty}: nothing to prepare")
    if stats[TRAIN]["documents"] == 0:
        log(f"warning: all {documents} documents were hashed into val/test; with this few documents "
            "everything goes to train (no val or test split)")
        shards, stats = _merge_into_train(staging, shards, stats, dtype, shard_tokens, vocab)
    elif source.inputs and stats[VAL]["documents"] == 0 and source.val_fraction > 0:
        log(f"warning: no document went to the val split ({documents} documents, --val-fraction "
            f"{source.val_fraction}): training will report no validation loss; raise --val-fraction")
    if reader.replaced:
        log(f"warning: replaced {reader.replaced:,} invalid UTF-8 sequences with U+FFFD (--strict refuses them)")
    if source.skipped:
        log(f"note: skipped {len(source.skipped)} files of other types (e.g. {source.skipped[0]})")
    splits = {}
    for label, split in enumerate(SPLITS):
        if stats[label]["documents"] == 0:
            continue
        entry = {"tokens": sum(s["tokens"] for s in shards[label]), **stats[label], "shards": shards[label]}
        if source.splits is not None:
            entry["document_names"] = names[label]
        splits[split] = entry
    manifest = {
        "format": FORMAT,
        "corpus": source.corpus if source.splits is not None else None,
        "inputs": source.inputs or None,
        "tokenizer": tokenizer_name,
        "tokenizer_fingerprint": fingerprint,
        "vocab_size": vocab,
        "eos_id": eos_id,
        "eos_token": eos,
        "dtype": dtype.name,
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


def _commit(out: Path, staging: Path, manifest: dict) -> None:
    """Move the staged corpus into ``out``; the manifest goes last (see the module docstring)."""
    from mossnet.rundir.atomic import fsync_dir, fsync_tree

    old = _old_names(out)
    new = [shard["file"] for entry in manifest["splits"].values() for shard in entry["shards"]] + [TOKENIZER_DIRNAME]
    foreign = [name for name in new if (out / name).exists() and name not in old]
    if foreign:
        raise OutputDirError(f"{out} already holds {', '.join(foreign)}, not written by prepare-data: move it away")
    fsync_tree(staging)
    (staging / JOURNAL).write_text(json.dumps({"names": sorted(set(new) | old)}) + "\n")
    fsync_dir(staging)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # from here on the directory is not complete
    fsync_dir(out)
    for name in new:
        if name == TOKENIZER_DIRNAME and (out / name).exists():
            (out / name).replace(staging / "tokenizer.old")
        (staging / name).replace(out / name)
    for name in old - set(new):
        (out / name).unlink(missing_ok=True)
    fsync_dir(out)
    write_manifest(out, manifest)
    fsync_dir(out)
    shutil.rmtree(staging)


def _old_names(out: Path) -> set[str]:
    """Entries of ``out`` that the corpus already there (if any) owns."""
    if not (out / MANIFEST_NAME).exists():
        return set()
    try:
        manifest = read_manifest(out)
    except DataError:  # a damaged manifest of ours: it owns nothing we can name
        return set()
    names = {shard["file"] for entry in manifest["splits"].values() for shard in entry["shards"]}
    return names | ({TOKENIZER_DIRNAME} if (out / TOKENIZER_DIRNAME).is_dir() else set())


def _mossnet_version() -> str:
    # From the installed distribution's metadata: importing mossnet itself would load the model.
    try:
        return importlib.metadata.version("mossnet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
