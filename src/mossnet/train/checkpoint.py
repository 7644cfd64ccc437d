"""Checkpoints: a Hugging Face model directory plus the trainer state, written atomically and
read back without unpickling anything.

Layout of a checkpoint directory (it is also the ``--out`` directory of a run)::

    config.json, model.safetensors, generation_config.json   # model.save_pretrained
    tokenizer.json, tokenizer_config.json, ...               # copied from DATA/tokenizer
    train_config.yaml                                        # the resolved TrainConfig
    trainer_state/
        optimizer.safetensors + optimizer.json               # AdamW state (tensors | structure)
        rank{R}.safetensors + rank{R}.json                   # RNG states + data position, per rank
        state.json                                           # step, counters, checksums; written last
    metrics.jsonl, metrics.csv, loss_curve.png, ...          # run logs, carried from save to save

Atomicity: everything is written into a sibling temporary directory; then the old directory is
renamed aside, the new one renamed into place, and the old one removed. A crash while writing
leaves the previous checkpoint untouched; a crash between the two renames leaves the previous
checkpoint at ``DIR.old``, which ``recover()`` (called by every save and load) moves back.

No pickle: tensors go to safetensors files, everything else (the structure of the optimizer
state, scalars, RNG bookkeeping) to JSON. ``dump_tree``/``load_tree`` convert any nesting of
dicts, lists, tuples, scalars, tensors and numpy arrays into that pair of files and back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mossnet.errors import CheckpointError  # re-exported: the trainer's domain error

FORMAT_VERSION = 1
STATE_DIR = "trainer_state"
STATE_FILE = "state.json"
LOG_FILES = ("metrics.jsonl", "metrics.csv", "loss_curve.png", "train.log")




# --------------------------------------------------------------------------------------------
# Tree codec: nested python structures <-> (JSON-able skeleton, {key: tensor})


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "value"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "value"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj:
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{k}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path or 'root'})")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def dump_tree(obj: Any, stem: Path) -> None:
    """Write ``obj`` as ``stem.json`` (structure) + ``stem.safetensors`` (tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(obj, tensors, "")
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(skeleton))


def load_tree(stem: Path) -> Any:
    json_path, st_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (json_path, st_path):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing")
    try:
        skeleton = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {json_path} is corrupt (not valid JSON: {err})") from None
    tensors = _load_safetensors(st_path)
    try:
        return _decode(skeleton, tensors)
    except KeyError as err:
        raise CheckpointError(f"checkpoint files {stem}.* disagree: tensor {err} is missing") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated ({err})") from None


# --------------------------------------------------------------------------------------------
# RNG state (python, numpy, torch CPU, CUDA) as plain values + uint8 tensors


def capture_rng() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": np.asarray(np_keys, dtype=np.uint32), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"], n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))


# --------------------------------------------------------------------------------------------
# Atomic directory replacement


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def recover(path: str | Path) -> None:
    """Undo a save that crashed between its two renames: restore ``DIR.old`` when ``DIR`` is
    gone (a leftover ``.DIR.tmp`` is removed by the next save)."""
    path = Path(path)
    old = _old(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    elif path.exists() and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def begin_save(path: str | Path) -> Path:
    """Create and return an empty temporary directory next to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = _tmp(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def commit_save(tmp: Path, path: str | Path, carry: tuple[str, ...] = LOG_FILES) -> None:
    """Move the finished ``tmp`` into place as ``path`` (carrying the run's log files and any
    other file the user left in ``path`` that the new checkpoint does not replace)."""
    path = Path(path)
    if path.is_dir():
        for entry in path.iterdir():
            target = tmp / entry.name
            if target.exists() or entry.name == STATE_DIR:
                continue
            if entry.name in carry or not _is_checkpoint_artifact(entry.name):
                if entry.is_dir():
                    shutil.copytree(entry, target)
                else:
                    shutil.copy2(entry, target)
        old = _old(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def abort_save(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def _is_checkpoint_artifact(name: str) -> bool:
    """Files that each save rewrites: never carried over from the previous checkpoint (a stale
    shard or tokenizer file from an earlier, different save must not survive)."""
    return (
        name in ("config.json", "generation_config.json", "train_config.yaml", "chat_template.jinja")
        or name.startswith(("model", "tokenizer", "special_tokens_map", "vocab", "merges"))
        or name.endswith((".safetensors", ".bin"))
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Trainer state


def copy_tokenizer(data_dir: str | Path, dest: Path) -> None:
    src = Path(data_dir) / "tokenizer"
    if not src.is_dir():
        return
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)


def write_trainer_state(tmp: Path, state: dict[str, Any], optimizer_state: dict[str, Any] | None) -> None:
    """Write ``trainer_state/`` into the temporary checkpoint ``tmp`` (rank 0). ``state.json``
    goes last, with checksums of every file of the checkpoint: its presence marks a complete
    checkpoint."""
    sdir = tmp / STATE_DIR
    sdir.mkdir(exist_ok=True)
    if optimizer_state is not None:
        dump_tree(optimizer_state, sdir / "optimizer")
    checksums = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file() and f.name != STATE_FILE and f.suffix in (".safetensors", ".json"):
            checksums[str(f.relative_to(tmp))] = sha256(f)
    record = {"format_version": FORMAT_VERSION, "saved_at": time.time(), **state,
              "checksums": checksums}
    (sdir / STATE_FILE).write_text(json.dumps(record, indent=2))


def write_rank_state(tmp: Path, rank: int, state: dict[str, Any]) -> None:
    sdir = tmp / STATE_DIR
    sdir.mkdir(exist_ok=True)
    dump_tree(state, sdir / f"rank{rank}")


def read_trainer_state(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and check ``trainer_state/state.json``; with ``verify``, compare every checksum."""
    path = Path(path)
    recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    state_file = path / STATE_DIR / STATE_FILE
    if not state_file.is_file():
        if (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} holds a model but no trainer state ({STATE_DIR}/{STATE_FILE} is missing): "
                "it cannot be resumed (was it written by save_pretrained only, or was a save cut short?)")
        raise CheckpointError(f"{path} is not a checkpoint directory ({STATE_DIR}/{STATE_FILE} is missing)")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file} is corrupt (not valid JSON: {err})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{state_file} is not a trainer state (no 'step')")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{state_file} has format version {version}; this trainer reads {FORMAT_VERSION}")
    if verify:
        for rel, digest in state.get("checksums", {}).items():
            f = path / rel
            if not f.is_file():
                raise CheckpointError(f"checkpoint {path} is incomplete: {rel} is missing")
            if sha256(f) != digest:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: {rel} does not match the checksum recorded when "
                    f"it was saved at step {state['step']} (the file was truncated or changed)")
    return state


def read_optimizer_state(path: str | Path) -> dict[str, Any]:
    return load_tree(Path(path) / STATE_DIR / "optimizer")


def read_rank_state(path: str | Path, rank: int) -> dict[str, Any] | None:
    stem = Path(path) / STATE_DIR / f"rank{rank}"
    if not stem.with_suffix(".json").is_file():
        return None
    return load_tree(stem)


def check_optimizer_state(opt_state: dict[str, Any], expected_names: list[list[str]],
                          shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Fail with a precise message when a saved optimizer state does not fit the current model."""
    saved_names = opt_state.get("param_names")
    if saved_names is None:
        raise CheckpointError(f"{where}: optimizer state has no parameter names")
    if len(saved_names) != len(expected_names):
        raise CheckpointError(f"{where}: optimizer has {len(saved_names)} parameter groups in the "
                              f"checkpoint but {len(expected_names)} now")
    for g, (saved, now) in enumerate(zip(saved_names, expected_names)):
        if saved != now:
            missing = [n for n in now if n not in saved]
            extra = [n for n in saved if n not in now]
            detail = []
            if missing:
                detail.append(f"not in the checkpoint: {missing[:5]}")
            if extra:
                detail.append(f"only in the checkpoint: {extra[:5]}")
            if not detail:
                detail.append("same parameters in a different order")
            raise CheckpointError(f"{where}: optimizer group {g} does not match the model ("
                                  + "; ".join(detail) + ")")
    state = opt_state["optimizer"]["state"]
    flat = [n for group in expected_names for n in group]
    for idx, entry in state.items():
        name = flat[int(idx)]
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and tuple(value.shape) != shapes[name]:
                raise CheckpointError(f"{where}: optimizer state {key!r} of {name} has shape "
                                      f"{tuple(value.shape)} but the parameter has {shapes[name]}")


def save_checkpoint(
    path: str | Path,
    *,
    rank: int,
    barrier: Callable[[], None],
    write_model: Callable[[Path], None],
    state: dict[str, Any],
    optimizer_state: dict[str, Any] | None,
    rank_state: dict[str, Any],
) -> None:
    """The whole save protocol, for one process or many (each calls it with its own rank).

    Rank 0 creates the temporary directory and writes the model (``write_model(tmp)``) and the
    optimizer; every rank writes its own RNG/data state; rank 0 writes ``state.json`` last and
    renames the directory into place. ``barrier`` synchronises the ranks (a no-op for one)."""
    path = Path(path)
    tmp = _tmp(path)
    if rank == 0:
        begin_save(path)
    barrier()
    try:
        if rank == 0:
            write_model(tmp)
        write_rank_state(tmp, rank, rank_state)
        barrier()
        if rank == 0:
            write_trainer_state(tmp, state, optimizer_state)
            commit_save(tmp, path)
    except BaseException:
        if rank == 0:
            abort_save(tmp)
        raise
    barrier()
