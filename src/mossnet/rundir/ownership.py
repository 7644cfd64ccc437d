"""Which directories a command may write into.

The rule: a command writes only into a directory that is new, empty, or was written by the same
kind of MossNet command, and even then only its own entries. A directory that holds someone else's
files, or that overlaps a directory the command reads (``--data``, the checkpoint it exports), is
refused with one line unless the user passes ``--force``; with ``--force`` the command still
writes only its own reserved names and refuses if one of them exists and is not its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

from mossnet.errors import OutputDirError

from .layout import RESERVED, is_run_dir


def claim_output_dir(
    out: str | Path,
    *,
    option: str = "--out",
    force: bool = False,
    owned: Callable[[Path], bool] = is_run_dir,
    reserved: Iterable[str] = RESERVED,
    reuse_owned: bool = False,
    owned_refusal: str = "already holds a MossNet run; pass --force to replace it",
    read_dirs: Mapping[str, str | Path | None] = {},
) -> Path:
    """Check that ``out`` may be written, create it, and return it as a Path.

    ``owned(path)`` says whether an existing directory was written by this kind of command.
    ``reuse_owned`` lets such a directory be continued (a resume in place); otherwise it is
    refused with ``owned_refusal`` unless ``force``. ``read_dirs`` maps an option name to a
    directory the command reads: ``out`` may not be, be inside, or contain one of them without
    ``force``. Raises OutputDirError (one line) on refusal.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{option} {path} is a file, not a directory")
    _check_overlap(path, option, read_dirs, force)
    if path.is_dir() and any(path.iterdir()):
        if owned(path):
            if not (reuse_owned or force):
                raise OutputDirError(f"{option} {path} {owned_refusal}")
        elif not force:
            raise OutputDirError(
                f"{option} {path} is not empty and was not written by this MossNet command "
                f"(it holds {_sample(path)}); choose a new or empty directory, or pass --force "
                "(only MossNet's own entries are then written; nothing else there is touched)")
        else:
            foreign = [name for name in reserved if (path / name).exists()]
            if foreign:
                raise OutputDirError(f"{option} {path} already holds {', '.join(foreign)}, not written by "
                                     "MossNet; even with --force these are never replaced: move them away")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"{option} {path} cannot be created: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputDirError(f"{option} {path} is not writable")
    return path


def _check_overlap(out: Path, option: str, read_dirs: Mapping[str, str | Path | None], force: bool) -> None:
    target = out.resolve()
    for name, other in read_dirs.items():
        if not other:
            continue
        src = Path(other).resolve()
        if target == src:
            relation = f"is the {name} directory"
        elif src in target.parents:
            relation = f"is inside the {name} directory {other}"
        elif target in src.parents:
            relation = f"contains the {name} directory {other}"
        else:
            continue
        if not force:
            raise OutputDirError(f"{option} {out} {relation}: writing there could destroy what the command "
                                 f"reads; choose another {option} (or pass --force)")


def _sample(path: Path, n: int = 3) -> str:
    names = sorted(p.name for p in path.iterdir())
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
