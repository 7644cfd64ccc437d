"""SHA-256 records of a model directory's weight and config files, and their verification.

The record is ``SHA256SUMS`` inside the model directory, in coreutils' format (``sha256sum -c
SHA256SUMS`` checks it by hand), so a model directory copied on its own still verifies. Older flat
checkpoints kept their checksums in ``trainer_state/state.json``; those are verified too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mossnet.errors import CheckpointError

from .layout import LEGACY_STATE

CHECKSUMS = "SHA256SUMS"
_RECORDED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".py")


def sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB blocks (never whole): model weights, trainer
    files and token shards are all hashed here."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def recorded_files(model_dir: Path) -> list[Path]:
    """The files a record covers: weights (``*.safetensors``), every config or tokenizer file, and
    the remote-code shims (``*.py``)."""
    return sorted(p for p in model_dir.iterdir()
                  if p.is_file() and p.name != CHECKSUMS and p.suffix in _RECORDED_SUFFIXES)


def write_checksums(model_dir: str | Path) -> dict[str, str]:
    """Write ``SHA256SUMS`` for the files of ``model_dir``; returns {name: hex digest}."""
    model_dir = Path(model_dir)
    digests = {p.name: sha256(p) for p in recorded_files(model_dir)}
    (model_dir / CHECKSUMS).write_text("".join(f"{d}  {name}\n" for name, d in digests.items()))
    return digests


def read_checksums(model_dir: Path) -> dict[str, str] | None:
    """The record of ``model_dir`` ({name: digest}), or None when it has none."""
    path = model_dir / CHECKSUMS
    if path.is_file():
        digests = {}
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if len(parts) != 2 or len(parts[0]) != 64:
                raise CheckpointError(f"{path} is corrupt at line {number}")
            digests[parts[1].lstrip("*")] = parts[0]
        return digests
    legacy = model_dir / LEGACY_STATE
    if legacy.is_file():
        try:
            sums = json.loads(legacy.read_text()).get("checksums", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise CheckpointError(f"{legacy} is corrupt (not valid JSON)") from None
        return {k: v for k, v in sums.items() if "/" not in k}
    return None


def verify_model_dir(model_dir: str | Path, verify: bool = True) -> bool:
    """Check that ``model_dir`` has a readable config.json and, with ``verify``, that every
    recorded file is present and unchanged. Returns whether a record was checked.

    Raises CheckpointError naming the first bad file."""
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{model_dir} has no config.json (a model is never loaded with a guessed config)")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config} is corrupt (not valid JSON: {err})") from None
    if not verify:
        return False
    digests = read_checksums(model_dir)
    if digests is None:
        return False
    for name, digest in digests.items():
        f = model_dir / name
        if not f.is_file():
            raise CheckpointError(f"{model_dir} is incomplete: {name} is missing (it is listed in {CHECKSUMS})")
        if sha256(f) != digest:
            raise CheckpointError(f"{f} does not match the SHA-256 recorded when it was saved: the file was "
                                  "damaged or changed (pass --no-verify to load it anyway)")
    return True


def check_finite(model, where: str) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer (a corrupt or diverged save)."""
    import torch

    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{where}: weight {name} has {bad} non-finite values (NaN or inf); "
                                  "refusing to use it")


def check_tokenizer_fits(tokenizer, vocab_size: int, where: str) -> None:
    """A tokenizer may be smaller than the model's (padded) vocabulary, never larger."""
    n = len(tokenizer)
    if n > vocab_size:
        raise CheckpointError(f"{where}: the tokenizer has {n:,} tokens but the model's vocabulary has "
                              f"{vocab_size:,}: they were not made for each other")
