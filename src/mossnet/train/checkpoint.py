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

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mossnet.errors import CheckpointError, ConfigError  # CheckpointError re-exported: the trainer's domain error
from mossnet.rundir import atomic
from mossnet.rundir.integrity import sha256, verify_model_dir, write_checksums
from mossnet.rundir.layout import MODEL, TRAINER, is_legacy_checkpoint

from .tree_codec import _load_safetensors, capture_rng, dump_tree, load_tree, restore_rng  # noqa: F401

FORMAT_VERSION = 2
STATE_FILE = "state.json"
CONFIG_FILE = "train_config.yaml"




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


def read_trainer_state(run: str | Path, verify: bool = True, recover: bool = True) -> dict[str, Any]:
    """Read and check ``RUN/trainer/state.json``; with ``verify``, compare every checksum of the
    trainer files and of the model directory. ``recover`` first finishes or removes an
    interrupted save (one process of a run does it: see ``Trainer``)."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"checkpoint directory {run} does not exist")
    if recover:
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


# --------------------------------------------------------------------------------------------
# The trainer's side: what a run saves, and how a resumed run takes it back


class SaveFailed(CheckpointError):
    """Writing a checkpoint failed (a full disk, say); the previous checkpoint is intact."""

    exit_code = 1


@dataclass
class RunState:
    """The counters a run carries from step to step and from checkpoint to checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training (validation and saves excluded)
    saved_step: int = -1  # the step of the newest checkpoint of this run's --out (-1: none yet)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.elapsed = float(state.get("elapsed_s", 0.0))


class Checkpointer:
    """Saves a run's checkpoints into ``cfg.out`` and restores a resumed run from ``cfg.resume``:
    model + tokenizer + card, optimizer, per-rank RNG and data position, counters, and the run's
    identity (data, seq_len, preset), which a resume must match unless ``--allow-change``."""

    def __init__(self, cfg, info, data, say: Callable[[str], None]):
        self.cfg, self.info, self.data, self.say = cfg, info, data, say
        self.out = Path(cfg.out)

    def save(self, run: RunState, model, optimizer, group_names, batches, lr: float,
             write_card: Callable[[Path], None]) -> None:
        """Write a checkpoint of ``run.step``; a failure (a full disk) leaves the previous one intact
        and raises SaveFailed."""
        from safetensors import SafetensorError

        try:
            self._save(run, model, optimizer, group_names, batches, lr, write_card)
        except (OSError, SafetensorError) as err:  # safetensors reports a failed write as its own error
            kept = (f"the checkpoint of step {run.saved_step} is intact" if run.saved_step >= 0
                    else "no checkpoint had been written yet")
            reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
            raise SaveFailed(f"saving the checkpoint of step {run.step} to {self.out} failed "
                             f"({reason}); {kept}") from None
        run.saved_step = run.step

    def _save(self, run, model, optimizer, group_names, batches, lr, write_card) -> None:
        from . import distributed
        from .config import save_yaml
        from .optim import float_learning_rates

        cfg, info = self.cfg, self.info
        model_state = distributed.full_model_state(model, info) if info.fsdp else None
        opt_state = distributed.full_optimizer_state(model, optimizer, info)
        if opt_state is not None:
            opt_state = float_learning_rates(opt_state)

        def write_model(model_dir: Path) -> None:
            model.save_pretrained(model_dir, **({"state_dict": model_state} if model_state is not None else {}))
            copy_tokenizer(self.data.data_dir, model_dir)
            write_card(model_dir)
            (model_dir.parent / TRAINER).mkdir(exist_ok=True)
            save_yaml(cfg, model_dir.parent / TRAINER / CONFIG_FILE)

        state = {**run.state_dict(), "world_size": info.world_size, "grad_accum": cfg.grad_accum,
                 "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "arch": cfg.arch, "preset": cfg.preset,
                 "lr": lr, "data": {"dir": str(cfg.data), "identity": self.data.identity,
                                    "train_tokens": int(sum(len(t) for t in self.data.train_sets))}}
        optimizer_state = {"optimizer": opt_state, "param_names": group_names} if opt_state is not None else None
        rank_state = {"data": batches.state_dict(), "rng": capture_rng()}
        with _quiet_transformers():
            save_checkpoint(self.out, rank=info.rank, barrier=info.barrier, write_model=write_model, state=state,
                            optimizer_state=optimizer_state, rank_state=rank_state, announce=self.say)

    def restore(self, resume_dir: Path, state: dict[str, Any], run: RunState, model, optimizer, group_names,
                batches) -> None:
        """Take a checkpoint's optimizer, data position, RNG and counters into this run."""
        from . import distributed
        from .optim import restore_implementation

        cfg, info = self.cfg, self.info
        opt = read_optimizer_state(resume_dir)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        check_optimizer_state(opt, group_names, shapes, str(resume_dir))
        try:
            distributed.load_full_optimizer_state(model, optimizer, opt["optimizer"], info)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{resume_dir}: the optimizer state cannot be loaded: {err}") from None
        restore_implementation(optimizer)
        for group in optimizer.param_groups:  # this run's hyper-parameters win
            group["betas"] = (cfg.beta1, cfg.beta2)
            group["eps"] = cfg.eps
            group["weight_decay"] = cfg.weight_decay if group.get("name") == "decay" else 0.0
        self.check_changes(resume_dir, state)
        saved_world = self._check_batch_layout(state)
        rank_state = read_rank_state(resume_dir, info.rank if info.rank < saved_world else 0)
        if rank_state is None:
            raise CheckpointError(f"{resume_dir}: the trainer state of rank {info.rank} is missing")
        try:
            batches.load_state_dict(rank_state["data"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{resume_dir}: the data position does not fit this run: {err}") from None
        restore_rng(rank_state["rng"])
        run.load_state_dict(state)
        if resume_dir.resolve() == self.out.resolve():
            run.saved_step = run.step  # that checkpoint is this run's newest
        self.say(f"resumed from {resume_dir} at step {run.step} ({run.tokens_seen:,} tokens seen)")
        if run.step >= cfg.max_steps:
            self.say(f"warning: the checkpoint is at step {run.step} and max_steps is {cfg.max_steps}: nothing to train")

    def check_changes(self, resume_dir: Path, state: dict[str, Any]) -> None:
        """A resumed run continues the recorded one: other data, seq_len or preset is refused
        unless --allow-change, and an allowed change is printed."""
        cfg = self.cfg
        recorded = {"data": state.get("data", {}).get("identity"), "seq_len": state.get("seq_len"),
                    "preset": state.get("preset")}
        recorded = {k: v for k, v in recorded.items() if v is not None}
        changes = resume_changes(recorded, {"data": self.data.identity, "seq_len": cfg.seq_len, "preset": cfg.preset})
        if changes and not cfg.allow_change:
            raise ConfigError(f"resuming {resume_dir} with changes: {'; '.join(changes)}; pass --allow-change "
                              "to accept them (the run then no longer continues the recorded one exactly)")
        for change in changes:
            self.say(f"warning: allowed change on resume: {change}")

    def _check_batch_layout(self, state: dict[str, Any]) -> int:
        cfg, info = self.cfg, self.info
        saved_world = int(state.get("world_size", 1))
        saved_micro = saved_world * int(state.get("grad_accum", cfg.grad_accum))
        if saved_micro != info.world_size * cfg.grad_accum or state.get("batch_size", cfg.batch_size) != cfg.batch_size:
            self.say(f"warning: the checkpoint was trained with {saved_micro} micro-batches of "
                     f"{state.get('batch_size')} per step, this run uses {info.world_size * cfg.grad_accum} of "
                     f"{cfg.batch_size}: training continues, but on other batches than the original run would have seen")
        return saved_world


@contextlib.contextmanager
def _quiet_transformers():
    """No "Writing model shards" progress bar inside the trainer's own progress bar."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
