"""Token files of a prepared corpus: ``{split}.bin`` arrays plus ``manifest.json``.

Layout of a prepared directory::

    DIR/train.bin  DIR/val.bin  DIR/test.bin   raw little-endian token ids, no header
    DIR/tokenizer/                              transformers tokenizer (see tokenizer.py)
    DIR/manifest.json                           what the files hold, and their SHA-256

Each ``.bin`` is the concatenation ``doc_1 eos doc_2 eos ... doc_n eos``: one eos id after every
document (GPT-2's convention), so the model learns to end documents and to start a new one after
an eos. The dtype is uint16 when the vocabulary fits (<= 65535 ids), else uint32.

Every file is written to a temporary name and moved into place with :func:`os.replace`, which is
atomic, and the manifest is written last: a directory with a manifest is complete, and an
interrupted run never leaves a truncated file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mossnet.data.errors import ChecksumError, ManifestError

FORMAT = "mossnet-tokens-v1"
MANIFEST_NAME = "manifest.json"
SPLIT_KEYS = ("file", "tokens", "bytes", "documents", "sha256")
MANIFEST_KEYS = ("format", "corpus", "tokenizer", "vocab_size", "eos_id", "dtype", "splits")
DTYPES = ("uint16", "uint32")
_HASH_BLOCK = 1 << 22  # 4 MiB: read files for hashing in blocks, never whole


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype for ids ``0 .. vocab_size - 1``: uint16 up to 65535 tokens."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def check_token_ids(tokens: np.ndarray, vocab_size: int) -> None:
    """Raise ValueError naming the first id outside ``0 .. vocab_size - 1`` (one pass over tokens)."""
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return
    low, high = tokens.min(), tokens.max()
    if low >= 0 and high < vocab_size:
        return
    position = int(np.flatnonzero((tokens < 0) | (tokens >= vocab_size))[0])
    raise ValueError(
        f"token id {int(tokens[position])} at position {position} is outside the vocabulary "
        f"(vocab_size={vocab_size}, valid ids 0..{vocab_size - 1}); the data and the model (or "
        f"tokenizer) do not match"
    )


def _temporary(path: Path) -> Path:
    # Same directory as the target, so os.replace is a rename within one file system.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_tokens(path: Path, arrays: Iterable[np.ndarray], dtype: np.dtype) -> tuple[int, str]:
    """Write the concatenation of ``arrays`` (1-D ids) to ``path`` atomically.

    Arrays are streamed (a corpus never needs to fit in memory) and hashed on the way.
    Returns (number of tokens, SHA-256 hex digest of the file).
    """
    dtype = np.dtype(dtype).newbyteorder("<")
    limit = np.iinfo(dtype).max
    tmp = _temporary(path)
    digest, count = hashlib.sha256(), 0
    try:
        with tmp.open("wb") as out:
            for ids in arrays:
                ids = np.asarray(ids)
                if ids.size and (ids.min() < 0 or ids.max() > limit):
                    raise ValueError(f"token id out of range for {dtype.name}: {ids.min()}..{ids.max()}")
                data = ids.astype(dtype, copy=False).tobytes()
                out.write(data)
                digest.update(data)
                count += ids.size
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if something failed
    return count, digest.hexdigest()


def write_manifest(data_dir: Path, manifest: dict) -> Path:
    """Validate ``manifest`` and write it atomically to ``data_dir/manifest.json``."""
    path = Path(data_dir) / MANIFEST_NAME
    _validate(manifest, path)
    tmp = _temporary(path)
    try:
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(data_dir: str | Path) -> dict:
    """The parsed ``manifest.json`` of a prepared corpus, after checking its format and keys.

    Raises :class:`ManifestError` if it is missing, not JSON, of another format, or incomplete.
    """
    path = Path(data_dir) / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(
            f"{path} not found: {data_dir} is not a prepared corpus (or its preparation did not "
            f"finish); run `mossnet prepare-data --out {data_dir}`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is corrupt (not valid JSON: {err}); prepare the data again") from None
    _validate(manifest, path)
    return manifest


def _validate(manifest: object, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    if manifest["dtype"] not in DTYPES:
        raise ManifestError(f"{path}: dtype {manifest['dtype']!r} is not one of {DTYPES}")
    if not isinstance(manifest["splits"], dict) or not manifest["splits"]:
        raise ManifestError(f"{path}: 'splits' must be a non-empty object")
    for split, entry in manifest["splits"].items():
        missing = [key for key in SPLIT_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ManifestError(f"{path}: split {split!r} is missing keys {missing}")


def _split_entry(manifest: dict, split: str, data_dir: Path) -> dict:
    if split not in manifest["splits"]:
        raise ManifestError(f"{data_dir} has no split {split!r}; it has {sorted(manifest['splits'])}")
    return manifest["splits"][split]


def open_split(data_dir: str | Path, split: str, *, verify: bool = False) -> np.memmap:
    """Memory-map ``split``'s tokens: a read-only 1-D array of shape (tokens,), manifest dtype.

    The file's size must match the token count in the manifest (cheap, always checked);
    ``verify=True`` also checks its SHA-256 (reads the whole file).
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    entry = _split_entry(manifest, split, data_dir)
    path = data_dir / entry["file"]
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    expected = int(entry["tokens"]) * dtype.itemsize
    size = path.stat().st_size if path.exists() else None
    if size != expected:
        found = "it is missing" if size is None else f"it has {size} bytes"
        raise ManifestError(
            f"{path}: the manifest lists {entry['tokens']} {dtype.name} tokens ({expected} bytes) "
            f"but {found}; the file is truncated or from another run, prepare the data again"
        )
    if verify:
        verify_checksum(data_dir, split)
    return np.memmap(path, dtype=dtype, mode="r", shape=(int(entry["tokens"]),))


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(data_dir: str | Path, split: str) -> str:
    """Check ``split``'s file against the SHA-256 in the manifest; return the digest.

    Raises :class:`ChecksumError` naming the file and both digests when they differ.
    """
    data_dir = Path(data_dir)
    entry = _split_entry(read_manifest(data_dir), split, data_dir)
    path = data_dir / entry["file"]
    if not path.exists():
        raise ManifestError(f"{path} is missing; prepare the data again")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise ChecksumError(
            f"{path} is corrupt: its SHA-256 is {actual}, the manifest says {entry['sha256']}; "
            f"prepare the data again"
        )
    return actual
