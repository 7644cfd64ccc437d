"""The save protocol: the parts of a checkpoint (``model/`` and ``trainer/``) are replaced together
or not at all, and nothing else in the run directory is touched.

    1. ``begin_save``: finish or undo any interrupted save (``recover``), then create
       ``RUN/.checkpoint.mossnet-tmp/`` holding ``mossnet-save.json`` (it proves the folder is ours).
    2. The caller writes the new parts into it (``tmp/model``, ``tmp/trainer``).
    3. ``commit_save``: fsync every file and folder, then write ``mossnet-save-complete`` (fsynced):
       from here on the save rolls *forward*. For each part: ``RUN/part`` -> ``RUN/.part.mossnet-old``,
       ``tmp/part`` -> ``RUN/part``; fsync ``RUN``; remove the old parts and the temporary folder.

A crash (SIGKILL, power loss, full disk) at any point leaves either the previous checkpoint or the
new one: ``recover`` removes an incomplete temporary folder, and completes the renames of a complete
one. Reserved names are removed only after checking that they are ours, and each removal is
announced.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable

TMP = ".checkpoint.mossnet-tmp"
SAVE_MARK = "mossnet-save.json"
COMPLETE = "mossnet-save-complete"
PARTS = ("model", "trainer")

Announce = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def old_path(root: Path, part: str) -> Path:
    return root / f".{part}.mossnet-old"


def begin_save(root: str | Path, announce: Announce = _stderr) -> Path:
    """Return a fresh, empty temporary folder inside ``root`` for the parts of a new checkpoint."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recover(root, announce)
    tmp = root / TMP
    tmp.mkdir()
    (tmp / SAVE_MARK).write_text(json.dumps({"pid": os.getpid()}) + "\n")
    return tmp


def commit_save(root: str | Path, tmp: Path, parts: Iterable[str] = PARTS) -> None:
    """Make the parts written into ``tmp`` the checkpoint of ``root`` (see the module docstring)."""
    root = Path(root)
    fsync_tree(tmp)
    complete = tmp / COMPLETE
    with open(complete, "w") as f:
        f.write(" ".join(parts) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    _roll_forward(root, tmp, announce=None)


def abort_save(tmp: Path) -> None:
    """Remove a temporary folder whose save failed before it was complete. A complete one is
    left for ``recover`` to roll forward: some of its parts may already be in place."""
    if (tmp / SAVE_MARK).is_file() and not (tmp / COMPLETE).is_file():
        _remove_save_folder(tmp)


def recover(root: str | Path, announce: Announce = _stderr) -> None:
    """Finish a save that was interrupted after its temporary folder was complete, or remove one
    that was interrupted before; remove leftover old parts. Safe to call at any time."""
    root = Path(root)
    tmp = root / TMP
    if tmp.is_dir():
        entries = {p.name for p in tmp.iterdir()}
        if not entries:  # a save killed as it began or as it ended: nothing in it to lose
            tmp.rmdir()
        elif SAVE_MARK not in entries:
            announce(f"warning: {tmp} is not a MossNet save folder; left as it is")
        elif COMPLETE in entries:
            announce(f"completing a checkpoint save that was interrupted in {root}")
            _roll_forward(root, tmp, announce)
        elif entries == {SAVE_MARK}:  # a committed save killed while removing its folder
            _remove_save_folder(tmp)
        else:
            announce(f"removing an unfinished checkpoint save ({tmp}); the previous checkpoint is kept")
            _remove_save_folder(tmp)
    for part in PARTS:
        _drop_old(root, part, announce)


def save_in_progress(root: str | Path) -> bool:
    """Whether ``root`` holds the traces of a save that is running, or was interrupted and not yet
    recovered: the temporary folder, or an old part."""
    root = Path(root)
    return (root / TMP).is_dir() or any(old_path(root, part).is_dir() for part in PARTS)


def wait_until_recovered(root: str | Path, timeout: float = 300.0, poll: float = 0.2) -> None:
    """Wait while another process (rank 0 of a run) finishes or removes an interrupted save, so
    that this one never reads, or repairs, a checkpoint halfway through its renames. Raises
    TimeoutError after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while save_in_progress(root):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{root}: an interrupted checkpoint save was not recovered within {timeout:.0f} s")
        time.sleep(poll)


def _roll_forward(root: Path, tmp: Path, announce: Announce | None) -> None:
    parts = (tmp / COMPLETE).read_text().split()
    for part in parts:
        new, current, old = tmp / part, root / part, old_path(root, part)
        if not new.exists():
            continue  # already moved into place before the interruption
        if current.exists():
            if old.exists():
                shutil.rmtree(old)  # older than ``current``: a leftover of an earlier save
            os.replace(current, old)
        os.replace(new, current)
    fsync_dir(root)
    for part in parts:
        _drop_old(root, part, announce)
    _remove_save_folder(tmp)
    fsync_dir(root)


def _remove_save_folder(tmp: Path) -> None:
    """Remove a save folder so that a kill at any point leaves one ``recover`` still knows: the
    contents first, then the completion mark, then the save mark, then the (empty) folder. A
    folder that lost its save mark while still holding files would be taken for someone else's
    and block every later save."""
    for entry in tmp.iterdir():
        if entry.name in (SAVE_MARK, COMPLETE):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for mark in (COMPLETE, SAVE_MARK):
        (tmp / mark).unlink(missing_ok=True)
    tmp.rmdir()


def _drop_old(root: Path, part: str, announce: Announce | None) -> None:
    old, current = old_path(root, part), root / part
    if not old.is_dir():
        return
    if not current.exists():  # cannot happen under this protocol; never lose the only copy
        os.replace(old, current)
        if announce:
            announce(f"restored {current} from {old}")
        return
    shutil.rmtree(old)
    if announce:
        announce(f"removed {old}, left over from an interrupted save")


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path``, then every folder (deepest first), so a rename that
    follows cannot be persisted before the data it points to."""
    dirs = []
    for dirpath, _, files in os.walk(path):
        dirs.append(dirpath)
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
    for d in reversed(dirs):
        fsync_dir(Path(d))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)
