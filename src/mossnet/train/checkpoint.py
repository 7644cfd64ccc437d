"""Checkpoints of a training run, saved into its run directory (``mossnet.rundir``) and read back
without unpickling anything::

    RUN/model/      model.save_pretrained + the data's tokenizer + SHA256SUMS
    RUN/trainer/    train_config.yaml                       the resolved TrainConfig
                    optimizer.safetensors + optimizer.json  AdamW state (tensors | structure)
                    rank{R}.safetensors + rank{R}.json      RNG states + data position, per rank
                    state.json                              step, counters, data identity, checksums; last
    RUN/logs/       metrics.jsonl, metrics.csv, loss_curve.png, tensorboard/ (appended, never replaced)

``model/`` and ``trainer/`` are replaced together by ``rundir.atomic``: a crash, a signal or a
full disk leaves the previous checkpoint or the new one, never a mix, and nothing else in RUN is
touched.

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
from mossnet.rundir import atomic
from mossnet.rundir.integrity import sha256, verify_model_dir, write_checksums
from mossnet.rundir.layout import MODEL, TRAINER, is_legacy_checkpoint

FORMAT_VERSION = 2
STATE_FILE = "state.json"
CONFIG_FILE = "train_config.yaml"




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
# Trainer state


def copy_tokenizer(data_dir: str | Path, dest: Path) -> None:
    src = Path(data_dir) / "tokenizer"
    if not src.is_dir():
        return
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)


def write_trainer_state(trainer_dir: Path, state: dict[str, Any], optimizer_state: dict[str, Any] | None) -> None:
    """Write the optimizer and ``state.json`` into ``trainer_dir`` (rank 0, after every rank wrote
    its own files). ``state.json`` goes last, with checksums of every trainer file and of the
    model's SHA256SUMS: its presence marks a complete checkpoint."""
    trainer_dir.mkdir(exist_ok=True)
    if optimizer_state is not None:
        dump_tree(optimizer_state, trainer_dir / "optimizer")
    checksums = {f.name: sha256(f) for f in sorted(trainer_dir.iterdir())
                 if f.is_file() and f.name != STATE_FILE}
    record = {"format_version": FORMAT_VERSION, "saved_at": time.time(), **state, "checksums": checksums}
    (trainer_dir / STATE_FILE).write_text(json.dumps(record, indent=2))


def write_rank_state(trainer_dir: Path, rank: int, state: dict[str, Any]) -> None:
    trainer_dir.mkdir(exist_ok=True)
    dump_tree(state, trainer_dir / f"rank{rank}")


# Fields of state.json and the type each must have (a hand edit gets one line, not a traceback).
_STATE_FIELDS = {"step": int, "tokens_seen": int, "elapsed_s": (int, float), "world_size": int,
                 "grad_accum": int, "batch_size": int, "seq_len": int, "checksums": dict}


def read_trainer_state(run: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and check ``RUN/trainer/state.json``; with ``verify``, compare every checksum of the
    trainer files and of the model directory."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"checkpoint directory {run} does not exist")
    atomic.recover(run)
    if is_legacy_checkpoint(run):
        raise CheckpointError(f"{run} is a checkpoint of an older MossNet layout (model files beside "
                              "trainer_state/); it cannot be resumed by this version: start a new run from its "
                              f"weights with --init-from {run}, or use it with generate / eval / export")
    state_file = run / TRAINER / STATE_FILE
    if not state_file.is_file():
        if (run / MODEL / "config.json").is_file() or (run / "config.json").is_file():
            raise CheckpointError(
                f"{run} holds a model but no trainer state ({TRAINER}/{STATE_FILE} is missing): it cannot be "
                "resumed (start from its weights with --init-from instead)")
        raise CheckpointError(f"{run} is not a checkpoint directory ({TRAINER}/{STATE_FILE} is missing)")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file} is corrupt (not valid JSON: {err})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{state_file} is not a trainer state (no 'step')")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{state_file} has format version {version}; this trainer reads {FORMAT_VERSION}")
    for name, kind in _STATE_FIELDS.items():
        value = state.get(name)
        if name in state and (not isinstance(value, kind) or isinstance(value, bool)
                              or (kind is int and value < 0)):
            raise CheckpointError(f"{state_file}: field {name!r} has the invalid value {value!r}")
    if verify:
        for name, digest in state.get("checksums", {}).items():
            f = run / TRAINER / name
            if not f.is_file():
                raise CheckpointError(f"checkpoint {run} is incomplete: {TRAINER}/{name} is missing")
            if sha256(f) != digest:
                raise CheckpointError(
                    f"checkpoint {run} is corrupt: {TRAINER}/{name} does not match the checksum recorded when "
                    f"it was saved at step {state['step']} (the file was truncated or changed)")
        verify_model_dir(run / MODEL)
    return state


def read_optimizer_state(run: str | Path) -> dict[str, Any]:
    return load_tree(Path(run) / TRAINER / "optimizer")


def read_rank_state(run: str | Path, rank: int) -> dict[str, Any] | None:
    stem = Path(run) / TRAINER / f"rank{rank}"
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
    run: str | Path,
    *,
    rank: int,
    barrier: Callable[[], None],
    write_model: Callable[[Path], None],
    state: dict[str, Any],
    optimizer_state: dict[str, Any] | None,
    rank_state: dict[str, Any],
    announce: Callable[[str], None] = print,
) -> None:
    """The whole save protocol, for one process or many (each calls it with its own rank).

    Rank 0 opens the save (``rundir.atomic.begin_save``) and writes the model
    (``write_model(tmp/model)``, then its SHA256SUMS) and the optimizer; every rank writes its own
    RNG/data state; rank 0 writes ``state.json`` last and commits. ``barrier`` synchronises the
    ranks (a no-op for one). On any failure the temporary folder is removed and the previous
    checkpoint stays as it was."""
    run = Path(run)
    tmp = run / atomic.TMP
    if rank == 0:
        atomic.begin_save(run, announce)
    barrier()
    try:
        if rank == 0:
            (tmp / MODEL).mkdir()
            write_model(tmp / MODEL)
            write_checksums(tmp / MODEL)
        write_rank_state(tmp / TRAINER, rank, rank_state)
        barrier()
        if rank == 0:
            write_trainer_state(tmp / TRAINER, state, optimizer_state)
            atomic.commit_save(run, tmp)
    except BaseException:
        if rank == 0:
            atomic.abort_save(tmp)
        raise
    barrier()


def data_identity(manifest: dict[str, Any]) -> str:
    """A short hash that names a prepared corpus by content (its train split's records and its
    tokenizer), not by path: moving the directory keeps it, re-preparing other text changes it."""
    splits = manifest.get("splits", {}) if isinstance(manifest.get("splits"), dict) else {}
    key = {"train": splits.get("train"), "vocab_size": manifest.get("vocab_size"),
           "tokenizer": manifest.get("tokenizer_fingerprint") or manifest.get("tokenizer")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mixture_identity(identities: list[str], weights: list[float]) -> str:
    """The identity of a weighted mixture of corpora (order and weights matter)."""
    key = [[i, round(w, 9)] for i, w in zip(identities, weights)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def resume_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's recorded run identity and this run's
    (``data``, ``seq_len``, ``preset``), one phrase each."""
    changes = []
    for key in ("data", "seq_len", "preset"):
        if key in saved and saved[key] != now.get(key):
            changes.append(f"{key} {saved[key]!r} -> {now.get(key)!r}")
    return changes


def claim_run_dir(cfg, resume_state: dict[str, Any] | None) -> Path:
    """Check that this run may write ``cfg.out`` (see ``rundir.ownership``) and create it.

    A fresh run needs a new or empty directory (or one this trainer left without a checkpoint);
    continuing in place needs ``--resume`` of that directory; another run's checkpoint, someone
    else's files, or a directory overlapping ``--data`` are refused without ``--force``."""
    from mossnet.rundir import claim_output_dir, is_legacy_checkpoint, is_run_dir

    out = Path(cfg.out)
    in_place = bool(cfg.resume) and Path(cfg.resume).resolve() == out.resolve()
    if is_legacy_checkpoint(out) and not cfg.force:
        raise CheckpointError(f"--out {out} holds a checkpoint of an older MossNet layout; choose a new --out "
                              f"(start from its weights with --init-from {out}), or pass --force to write beside it")
    has_checkpoint = (out / TRAINER / STATE_FILE).is_file()
    if has_checkpoint:
        try:
            step = json.loads((out / TRAINER / STATE_FILE).read_text()).get("step", "?")
        except (OSError, ValueError):
            step = "?"
        refusal = (f"already holds a training run (step {step}); pass --resume {out} to continue it, "
                   "or --force to start a new run over it")
    else:
        refusal = "already holds a MossNet run"
    from mossnet.data.mixture import parse_data_sources

    reads = {f"--data source {s.path}" if "," in cfg.data else "--data": s.path
             for s in parse_data_sources(cfg.data)}
    reads["--init-from"] = getattr(cfg, "init_from", "")
    if cfg.resume and not in_place:
        reads["--resume"] = cfg.resume
    return claim_output_dir(out, force=cfg.force, owned=is_run_dir, reuse_owned=in_place or not has_checkpoint,
                            owned_refusal=refusal, read_dirs=reads)
