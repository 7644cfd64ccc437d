"""The output folder of ``mossnet prepare-data``, staged and committed so that no folder ever
looks complete when it is not:

1. :func:`claim` takes the folder (``mossnet.rundir.ownership``: a new or empty folder, or a
   prepared corpus with ``force``; never anyone else's files);
2. :func:`begin_staging` clears what an interrupted run left and makes ``OUT/STAGING``, where
   the shards and the tokenizer are written;
3. :func:`commit` deletes the old manifest, moves the new files into place, removes the old
   corpus's files that the new one does not reuse, and writes ``manifest.json`` last;
4. :func:`abandon` is the cleanup of a failure before or inside the commit.

A failure before step 3 leaves the previous corpus as it was and removes the staging folder
(and ``OUT`` itself if this run created it); a crash inside step 3 leaves a folder without a
manifest, which is never read as a corpus, and the next run with ``--force`` recognises its
files as its own from the journal left in the staging folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from mossnet.data.corpora import SPLITS
from mossnet.data.errors import DataError
from mossnet.data.token_store import MANIFEST_NAME, is_prepared_dir, read_manifest, shard_name, write_manifest
from mossnet.data.tokenizer import TOKENIZER_DIRNAME
from mossnet.errors import OutputDirError

STAGING = ".prepare.mossnet-tmp"
STAGING_MARK = "mossnet-prepare-staging"  # inside STAGING: proves the folder is ours
JOURNAL = "commit.json"  # inside STAGING: the names a commit is moving into OUT
RESERVED = (MANIFEST_NAME, TOKENIZER_DIRNAME, STAGING, *(f"{s}.bin" for s in SPLITS),
            *(shard_name(s, 0) for s in SPLITS))

Log = Callable[[str], None]


def claim(out_dir, force: bool, read_dirs: dict) -> tuple[Path, bool]:
    """The output folder, checked to be ours to write; and whether this run created it."""
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


def begin_staging(out: Path, log: Log) -> Path:
    """A fresh, marked staging folder in ``out`` (after clearing an interrupted run's). A
    staging folder without the mark is someone else's: OutputDirError, and it is left alone."""
    _clear_leftover(out, log)
    staging = out / STAGING
    staging.mkdir()
    try:
        (staging / STAGING_MARK).write_text("staging folder of mossnet prepare-data; safe to delete\n")
    except BaseException:
        staging.rmdir()
        raise
    return staging


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


def abandon(out: Path, created: bool, staging: Path | None) -> None:
    """After a failure: remove the staging folder this run made (None: it made none), unless a
    commit had begun (its journal then stays, so that the next run with --force knows which
    files in ``out`` are ours and clears them); remove ``out`` too if this run created it and
    it is empty."""
    if staging is not None and not (staging / JOURNAL).exists():
        shutil.rmtree(staging, ignore_errors=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def commit(out: Path, staging: Path, manifest: dict) -> None:
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
