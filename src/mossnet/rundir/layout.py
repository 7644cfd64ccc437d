"""The names inside a run directory, and where a directory's model lives."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mossnet.errors import CheckpointError

MODEL = "model"
TRAINER = "trainer"
LOGS = "logs"
MARKER = "mossnet-run.json"
# Entries MossNet itself may create at the top of a run directory; anything else there belongs to
# the user and is never written, moved or deleted.
RESERVED = (MODEL, TRAINER, LOGS, MARKER)
LEGACY_STATE = Path("trainer_state") / "state.json"  # flat checkpoints written before this layout


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` was written by a MossNet command (it holds ``mossnet-run.json``)."""
    return (Path(path) / MARKER).is_file()


def is_legacy_checkpoint(path: str | Path) -> bool:
    """A checkpoint of the older flat layout (model files and ``trainer_state/`` side by side)."""
    return (Path(path) / LEGACY_STATE).is_file()


def write_marker(root: str | Path, command: str) -> None:
    """Mark ``root`` as a MossNet run directory (kept from its first write on)."""
    root = Path(root)
    marker = root / MARKER
    if marker.is_file():
        return
    import mossnet

    record = {"format": "mossnet-run/1", "command": command, "created_at": time.time(),
              "mossnet_version": getattr(mossnet, "__version__", "unknown")}
    tmp = root / f".{MARKER}.mossnet-tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(marker)


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory that ``path`` names: ``RUN/model`` for a run directory, ``path`` itself
    for a plain Hugging Face model directory (or an older flat checkpoint).

    Raises CheckpointError with one line when neither holds a ``config.json``: a model is never
    loaded with an invented default configuration."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a run directory or a model directory)")
    for candidate in (path / MODEL, path):
        if (candidate / "config.json").is_file():
            return candidate
    if (path / MODEL).is_dir() or is_run_dir(path):
        raise CheckpointError(f"{path / MODEL} has no config.json: the model directory is incomplete "
                              "(a model is never loaded with a guessed default config)")
    raise CheckpointError(f"{path} is not a model directory: no config.json in it or in {path / MODEL}")
