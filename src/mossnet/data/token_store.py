"""Token files of a prepared corpus: ``{split}_NNNNN.bin`` shards plus ``manifest.json``.

Layout of a prepared directory (format ``mossnet-tokens-v2``)::

    DIR/train_00000.bin DIR/train_00001.bin ...   raw little-endian token ids, no header
    DIR/val_00000.bin   DIR/test_00000.bin        (a split with no documents has no file)
    DIR/tokenizer/                                transformers tokenizer (see tokenizer.py)
    DIR/manifest.json                             what the files hold, and their SHA-256

A split is the concatenation ``doc_1 eos doc_2 eos ... doc_n eos``: one separator id after every
document (GPT-2's convention), so the model learns to end documents and to start a new one after
it. That stream is cut into shards of at most ``shard_bytes`` bytes (1 GiB by default) at any
token, not at document ends: shards are storage only. Readers see one 1-D array per split
(:func:`open_split`), and a training window may span two shards. The dtype is uint16 when the
vocabulary fits (<= 65535 ids), else uint32.

The manifest keeps, for each split, the totals that perplexity, bits per byte and the studies
read (``tokens``, ``bytes``, ``documents``) and the shard list (``file``, ``tokens``,
``sha256`` of each). Version 1 (``mossnet-tokens-v1``: one ``{split}.bin`` per split, with
``file`` and ``sha256`` on the split itself) is still read: :func:`read_manifest` returns every
manifest in the v2 shape.

Writers never leave a file that looks complete and is not: ``prepare_data`` writes into a
staging folder and moves the files into place, and the manifest is always written last. A
directory with a manifest is complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mossnet.data.errors import ChecksumError, ManifestError, TokenIdError
from mossnet.rundir.integrity import sha256

FORMAT = "mossnet-tokens-v2"
FORMAT_V1 = "mossnet-tokens-v1"
FORMATS = (FORMAT_V1, FORMAT)
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB
MANIFEST_KEYS = ("format", "tokenizer", "vocab_size", "eos_id", "dtype", "splits")
SPLIT_TOTALS = ("tokens", "bytes", "documents")
DTYPES = ("uint16", "uint32")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype for ids ``0 .. vocab_size - 1``: uint16 up to 65535 tokens."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``train_00000.bin``."""
    return f"{split}_{index:05d}.bin"


def check_token_ids(tokens, vocab_size: int) -> None:
    """Raise :class:`TokenIdError` (a DataError and a ValueError) naming the first id outside
    ``0 .. vocab_size - 1``. One pass over ``tokens`` (an array, a memmap or a sharded split),
    a block at a time, so a corpus larger than memory is checked without loading it."""
    offset = 0
    for block in _blocks(tokens):
        if block.size and (block.min() < 0 or block.max() >= vocab_size):
            bad = np.flatnonzero((block < 0) | (block >= vocab_size))[0]
            raise TokenIdError(
                f"token id {int(block[bad])} at position {offset + int(bad)} is outside the vocabulary "
                f"(vocab_size={vocab_size}, valid ids 0..{vocab_size - 1}): the data and the model (or "
                f"tokenizer) do not match, or the token files are corrupt"
            )
        offset += block.size


def _blocks(tokens, size: int = 1 << 24) -> Iterable[np.ndarray]:
    """``tokens`` in consecutive blocks of at most ``size`` ids (views where possible)."""
    if hasattr(tokens, "iter_blocks"):
        yield from tokens.iter_blocks(size)
        return
    tokens = np.asarray(tokens)
    for start in range(0, len(tokens), size):
        yield tokens[start : start + size]


def _temporary(path: Path) -> Path:
    # Same directory as the target, so os.replace is a rename within one file system.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_tokens(path: Path, arrays: Iterable[np.ndarray], dtype: np.dtype) -> tuple[int, str]:
    """Write the concatenation of ``arrays`` (1-D ids) to one file at ``path``, atomically.

    Arrays are streamed (a corpus never needs to fit in memory) and hashed on the way.
    Returns (number of tokens, SHA-256 hex digest of the file). A manifest may list the file as
    a split's single shard: ``{"file": name, "tokens": n, "sha256": digest, ...}``.
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


# ---------------------------------------------------------------------------------------------
# The manifest


def write_manifest(data_dir: str | Path, manifest: dict) -> Path:
    """Validate ``manifest`` and write it atomically to ``data_dir/manifest.json``.

    A split given in the single-file form (``file`` and ``sha256`` on the split) is written as a
    one-shard list; a missing ``tokenizer_fingerprint`` is computed from ``data_dir/tokenizer/``
    (null when there is none). Returns the path written.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    manifest = normalize_manifest(manifest, path)
    tmp = _temporary(path)
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(data_dir: str | Path) -> dict:
    """The parsed ``manifest.json`` of a prepared corpus, in the v2 shape, after checking it.

    Every split has ``tokens``, ``bytes``, ``documents`` and a ``shards`` list; the manifest
    has ``tokenizer_fingerprint`` (computed from ``tokenizer/`` for a v1 corpus, null when it
    has no tokenizer). Raises :class:`ManifestError` (one line naming the file and the problem)
    if it is missing, not JSON, of another format, incomplete, or has a field of the wrong type.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path} not found: {data_dir} is not a prepared corpus (or its preparation did not "
            f"finish); run `mossnet prepare-data --out {data_dir}`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is corrupt (not valid JSON: {err}); prepare the data again") from None
    return normalize_manifest(manifest, path)


def is_prepared_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a ``manifest.json`` of a MossNet format (checked no further)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") in FORMATS


def normalize_manifest(manifest: object, path: Path) -> dict:
    """Check every field the readers use, and return the manifest in the v2 shape (a copy)."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") not in FORMATS:
        raise ManifestError(
            f"{path}: format is {manifest.get('format')!r}, expected one of {list(FORMATS)}; "
            f"prepare the data again with this version of mossnet"
        )
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}; prepare the data again")
    out = dict(manifest)
    vocab = _int_field(out, "vocab_size", path, minimum=1)
    eos = _int_field(out, "eos_id", path, minimum=0)
    if eos >= vocab:
        raise ManifestError(f"{path}: eos_id {eos} is outside the vocabulary (vocab_size {vocab})")
    if out["dtype"] not in DTYPES:
        raise ManifestError(f"{path}: dtype {out['dtype']!r} is not one of {list(DTYPES)}")
    if vocab - 1 > np.iinfo(out["dtype"]).max:
        raise ManifestError(f"{path}: vocab_size {vocab} does not fit dtype {out['dtype']}")
    if not isinstance(out["tokenizer"], str):
        raise ManifestError(f"{path}: 'tokenizer' must be a string, got {type(out['tokenizer']).__name__}")
    if "tokenizer_fingerprint" not in out:
        out["tokenizer_fingerprint"] = _fingerprint_of_dir(path.parent)
    elif out["tokenizer_fingerprint"] is not None and not isinstance(out["tokenizer_fingerprint"], str):
        raise ManifestError(f"{path}: 'tokenizer_fingerprint' must be a string or null")
    if not isinstance(out["splits"], dict) or not out["splits"]:
        raise ManifestError(f"{path}: 'splits' must be a non-empty object")
    out["splits"] = {split: _normalize_split(split, entry, path) for split, entry in out["splits"].items()}
    return out


def _normalize_split(split: object, entry: object, path: Path) -> dict:
    where = f"{path}: splits.{split}"
    if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise ManifestError(f"{path}: split name {split!r} is not a plain name")
    if not isinstance(entry, dict):
        raise ManifestError(f"{where} must be an object, got {type(entry).__name__}")
    entry = dict(entry)
    if "shards" not in entry:  # v1 (or a hand-written single file): one shard
        missing = [key for key in ("file", "sha256") if key not in entry]
        if missing:
            raise ManifestError(f"{where} has no 'shards' list (nor the v1 'file' and 'sha256'); "
                                "prepare the data again")
        entry["shards"] = [{"file": entry["file"], "tokens": entry.get("tokens"), "sha256": entry["sha256"]}]
    missing = [key for key in SPLIT_TOTALS if key not in entry]
    if missing:
        raise ManifestError(f"{where} is missing keys {missing}")
    for key in SPLIT_TOTALS:
        _int_field(entry, key, path, minimum=0, where=f"splits.{split}.{key}")
    shards = entry["shards"]
    if not isinstance(shards, list) or not all(isinstance(shard, dict) for shard in shards):
        raise ManifestError(f"{where}.shards must be a list of objects")
    entry["shards"] = [_normalize_shard(shard, f"splits.{split}.shards[{i}]", path) for i, shard in enumerate(shards)]
    total = sum(shard["tokens"] for shard in entry["shards"])
    if total != entry["tokens"]:
        raise ManifestError(f"{where}: its shards hold {total} tokens but 'tokens' says {entry['tokens']}")
    return entry


def _normalize_shard(shard: dict, where: str, path: Path) -> dict:
    missing = [key for key in ("file", "tokens", "sha256") if key not in shard]
    if missing:
        raise ManifestError(f"{path}: {where} is missing keys {missing}")
    name = shard["file"]
    # A plain name inside the directory: a manifest must never point readers (or the cleanup
    # of a re-preparation) at a file elsewhere.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ManifestError(f"{path}: {where}.file {name!r} is not a plain file name")
    _int_field(shard, "tokens", path, minimum=0, where=f"{where}.tokens")
    if not isinstance(shard["sha256"], str) or not _SHA256.fullmatch(shard["sha256"]):
        raise ManifestError(f"{path}: {where}.sha256 {shard['sha256']!r} is not a SHA-256 hex digest")
    return dict(shard)


def _int_field(record: dict, key: str, path: Path, *, minimum: int, where: str | None = None) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(
            f"{path}: {where or key} is {type(value).__name__} {value!r}, expected an integer; "
            f"the manifest was edited or damaged, prepare the data again"
        )
    if value < minimum:
        raise ManifestError(f"{path}: {where or key} is {value}, expected at least {minimum}")
    return value


def _fingerprint_of_dir(data_dir: Path) -> str | None:
    from mossnet.data.tokenizer import TOKENIZER_DIRNAME

    file = data_dir / TOKENIZER_DIRNAME / "tokenizer.json"
    if not file.is_file():
        return None
    stat = file.stat()
    return _cached_fingerprint(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _cached_fingerprint(path: str, mtime_ns: int, size: int) -> str:
    # A v1 manifest is read by every open_split; hashing GPT-2's vocabulary and merges takes
    # about half a second, so it is done once per file version.
    from mossnet.data.tokenizer import fingerprint_of_file

    return fingerprint_of_file(path)


def split_entry(manifest: dict, split: str, data_dir: str | Path) -> dict:
    """``manifest["splits"][split]``, or a ManifestError naming the splits there are."""
    if split not in manifest["splits"]:
        raise ManifestError(f"{data_dir} has no split {split!r}; it has {sorted(manifest['splits'])}")
    return manifest["splits"][split]


# ---------------------------------------------------------------------------------------------
# Reading


def open_split(data_dir: str | Path, split: str, *, verify: bool | str = False):
    """``split``'s tokens as one read-only 1-D array of shape (tokens,), manifest dtype.

    One shard gives an ``np.memmap``; several give a :class:`~mossnet.data.shards.ShardedTokens`
    that indexes like one (``len``, integers, slices, integer arrays of any shape; a window may
    span shards). Each shard's size must match the manifest (cheap, always checked).

    ``verify``: ``False`` hashes nothing; ``True`` checks every shard's SHA-256 now;
    ``"first-read"`` checks each shard the first time any of its tokens is read (what
    :func:`~mossnet.data.verify.verify_corpus` asks for when a corpus is too large to hash at
    start). A mismatch raises :class:`ChecksumError` naming the file.
    """
    from mossnet.data.shards import ShardedTokens

    if verify not in (False, True, "first-read"):
        raise ValueError(f"verify must be False, True or 'first-read', got {verify!r}")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    entry = split_entry(manifest, split, data_dir)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    shards = entry["shards"]
    for shard in shards:
        check_shard_size(data_dir, shard, dtype)
    if verify is True:
        for shard in shards:
            verify_shard(data_dir, shard)
    if len(shards) == 1 and verify != "first-read":
        shard = shards[0]
        if shard["tokens"] == 0:
            return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty file
        return np.memmap(data_dir / shard["file"], dtype=dtype, mode="r", shape=(shard["tokens"],))
    return ShardedTokens(data_dir, shards, dtype, verify_on_first_read=verify == "first-read")


def check_shard_size(data_dir: Path, shard: dict, dtype: np.dtype) -> None:
    """ManifestError unless ``shard``'s file exists with exactly ``tokens * itemsize`` bytes."""
    path = Path(data_dir) / shard["file"]
    expected = shard["tokens"] * dtype.itemsize
    size = path.stat().st_size if path.is_file() else None
    if size != expected:
        found = "it is missing" if size is None else f"it has {size} bytes"
        raise ManifestError(
            f"{path}: the manifest lists {shard['tokens']} {dtype.name} tokens ({expected} bytes) "
            f"but {found}; the file is truncated or from another run, prepare the data again"
        )


def verify_shard(data_dir: str | Path, shard: dict) -> str:
    """Check one shard file against its recorded SHA-256; return the digest or raise
    :class:`ChecksumError` naming the file and both digests."""
    path = Path(data_dir) / shard["file"]
    if not path.is_file():
        raise ManifestError(f"{path} is missing; prepare the data again")
    actual = sha256(path)
    if actual != shard["sha256"]:
        raise ChecksumError(
            f"{path} is corrupt: its SHA-256 is {actual}, the manifest says {shard['sha256']}; "
            f"prepare the data again"
        )
    return actual


def verify_checksum(data_dir: str | Path, split: str) -> str:
    """Check every shard of ``split`` against the manifest. Returns the shard digest for a
    one-shard split, else a digest over the shards' digests (a stable id of the split)."""
    data_dir = Path(data_dir)
    entry = split_entry(read_manifest(data_dir), split, data_dir)
    digests = [verify_shard(data_dir, shard) for shard in entry["shards"]]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()
