"""Verifying a prepared corpus before a command uses it (training, evaluation).

``verify_corpus`` checks the manifest (every field the readers use, with its type), that every
shard of the splits asked for exists with the size the manifest gives, and, for a corpus of at
most ``VERIFY_AT_START_BYTES`` (4 GiB) in those splits, the SHA-256 of every shard. Hashing runs
at about 0.4 GB/s on one core of our 2-core CPU machine (faster on most servers), so that is at
most about 10 s at start. A larger corpus is not hashed at start: the summary then says
``open_verify == "first-read"``, and ``open_split(..., verify="first-read")`` checks each shard
the first time a window touches it. Either way corrupted tokens are never trained on.

    summary = verify_corpus(data_dir, ["train", "val"])
    print(summary["message"])           # "verified DIR (SHA-256 of 12.3 MB in 0.1 s)"
    train = open_split(data_dir, "train", verify=summary["open_verify"])
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mossnet.data.token_store import check_shard_size, read_manifest, split_entry, verify_shard

VERIFY_AT_START_BYTES = 4 << 30  # hash everything at start up to 4 GiB of token files


def verify_corpus(data_dir: str | Path, splits: Iterable[str] | None = None, *, progress: bool = True,
                  max_bytes: int = VERIFY_AT_START_BYTES) -> dict:
    """Check a prepared corpus: manifest fields and types, shard sizes, and SHA-256s.

    ``splits``: the splits a command will read (default: all); a split that is asked for and
    missing is an error. Shards of at most ``max_bytes`` in total are hashed now; above it, each
    is left to be hashed on first read (see the module docstring). Raises a
    :class:`~mossnet.data.errors.DataError` subclass whose one-line message names the file and
    the problem.

    Returns ``{"data_dir", "splits", "files", "bytes", "hashed_bytes", "seconds", "open_verify",
    "identity", "message"}``: ``open_verify`` is what to pass to ``open_split(verify=...)``
    (``False`` when everything was hashed, ``"first-read"`` otherwise), ``identity`` a SHA-256
    over the manifest's shard digests (equal for byte-identical corpora), ``message`` the line
    to print.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    names = list(manifest["splits"]) if splits is None else list(splits)
    dtype = np.dtype(manifest["dtype"])
    shards = [shard for name in names for shard in split_entry(manifest, name, data_dir)["shards"]]
    for shard in shards:
        check_shard_size(data_dir, shard, dtype)
    total = sum(shard["tokens"] for shard in shards) * dtype.itemsize
    hash_now = total <= max_bytes
    if hash_now:
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"verifying {data_dir.name}",
                  disable=not progress, leave=False) as bar:
            for shard in shards:
                verify_shard(data_dir, shard)
                bar.update(shard["tokens"] * dtype.itemsize)
    seconds = time.perf_counter() - started
    if hash_now:
        message = f"verified {data_dir} (SHA-256 of {total / 1e6:,.1f} MB in {seconds:.1f} s)"
    else:
        message = (f"checked {data_dir} (sizes of {len(shards)} files, {total / 1e9:,.1f} GB in {seconds:.1f} s); "
                   f"above {max_bytes / 2**30:g} GiB each file's SHA-256 is checked on its first read")
    every = [shard["sha256"] for entry in manifest["splits"].values() for shard in entry["shards"]]
    return {
        "data_dir": str(data_dir),
        "splits": names,
        "files": len(shards),
        "bytes": total,
        "hashed_bytes": total if hash_now else 0,
        "seconds": seconds,
        "open_verify": False if hash_now else "first-read",
        "identity": hashlib.sha256("\n".join(every).encode()).hexdigest(),
        "message": message,
    }
