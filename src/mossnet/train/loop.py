"""The trainer. Read it top to bottom: ``train(cfg)`` is the whole program.

    setup (process group, device) -> claim the run directory -> data -> model (fresh or from the
    checkpoint) -> parallel wrapper -> AdamW -> resume trainer state -> loop:
        for each step: lr from the schedule; grad_accum micro-batches (forward, backward, router
        load); reduce the step's statistics across ranks; stop on a non-finite loss or gradient;
        clip; optimizer step; log; validate; checkpoint; stop cleanly on Ctrl-C / SIGTERM
    -> final checkpoint -> final validation next to the bigram baseline -> loss curve -> sample.

Ctrl-C and SIGTERM are caught from the start to the end of ``run``: the step in flight finishes,
a checkpoint is saved (unless the last one is current), and the run ends with 130 / 143.

One process, DDP and FSDP2 run the same code; ``distributed.py`` hides their differences.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mossnet.errors import CheckpointError, ConfigError, DataError, DeviceError, MossNetError
from mossnet.rundir import LOGS, MODEL, TRAINER, write_marker

from . import checkpoint as ckpt
from . import distributed
from .baselines import build_model_config, describe, model_class
from .config import TrainConfig, save_yaml
from .metrics import MetricsLogger, add_micro_batch, read_jsonl
from .cuda_graph_step import CapturedTrainStep
from .precision import autocast_factory
from .optim import (build_optimizer, float_learning_rates, group_param_names, lr_at, restore_implementation,
                    set_lr)

MODEL_TYPES = {"mossnet": "mossnet", "llama": "llama", "mamba2": "mamba2"}
# Model-config fields an --init-from run may change: they keep every tensor's shape.
SHAPE_KEEPING = ("ssm_top_k", "state_update", "router_renormalize", "router_aux_loss_coef", "router_z_loss_coef",
                 "scan_impl", "chunk_size")
VAL_SEGMENTS = 8  # periodic validation: evenly spaced segments of the split


class MicroBatches:
    """The micro-batches of each optimizer step, independent of how they are spread over ranks.

    Step ``n`` uses a global batch of ``world_size * grad_accum`` micro-batches; micro-batch
    ``m = rank * grad_accum + a`` is rows ``m * batch_size ...`` of ``TokenBatches`` batch ``n``
    drawn for ``world_size * grad_accum`` "ranks". So 2 processes accumulating 1 micro-batch
    and 1 process accumulating 2 see exactly the same data, in the same micro-batches (and the
    router statistics, which are per micro-batch, agree too)."""

    def __init__(self, sources: list, weights: list[float], batch_size: int, seq_len: int, seed: int,
                 grad_accum: int, rank: int, world_size: int, vocab_size: int | None):
        from mossnet.data import TokenBatches
        from mossnet.data.mixture import MixtureBatches

        n = world_size * grad_accum

        def stream(a: int):
            kw = dict(seed=seed, rank=rank * grad_accum + a, world_size=n, vocab_size=vocab_size if a == 0 else None)
            if len(sources) == 1:
                return TokenBatches(sources[0], batch_size, seq_len, **kw)
            return MixtureBatches(sources, weights, batch_size, seq_len, **kw)

        self.streams = [stream(a) for a in range(grad_accum)]
        self._next = 0

    def __next__(self):
        """The next micro-batch of this rank (cycling through its ``grad_accum`` streams)."""
        batch = next(self.streams[self._next])
        self._next = (self._next + 1) % len(self.streams)
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self._next != 0:
            raise RuntimeError("data position saved in the middle of an optimizer step")
        return self.streams[0].state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stream in self.streams:
            stream.load_state_dict(state)
        self._next = 0


class TrainingDiverged(MossNetError, RuntimeError):
    """The loss or the gradient became NaN/inf; the last good checkpoint was kept."""

    exit_code = 1


class SaveFailed(CheckpointError):
    """Writing a checkpoint failed (a full disk, say); the previous checkpoint is intact."""

    exit_code = 1


@dataclass
class TrainResult:
    step: int
    status: str  # "done" | "interrupted" (Ctrl-C) | "terminated" (SIGTERM)
    out: str
    final: dict[str, Any] = field(default_factory=dict)  # validation / bigram numbers
    losses: list[float] = field(default_factory=list)  # training loss of every step of this run
    grad_norms: list[float] = field(default_factory=list)
    sample: str = ""


def train(cfg: TrainConfig) -> TrainResult:
    check_device(cfg.device)
    info, device = distributed.setup(cfg.device, cfg.fsdp)
    try:
        return Trainer(cfg, info, device).run()
    finally:
        distributed.teardown(info)


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, in one line, before any work starts."""
    try:
        dev = torch.device("cpu" if device == "auto" else device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"--device {device}: {why} (use --device cpu, or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type != "cpu":
        raise DeviceError(f"--device {device}: training runs on cpu or cuda")


def build_model(cfg: TrainConfig, config) -> nn.Module:
    """A freshly initialised model of ``config`` (seeded: identical on every rank)."""
    torch.manual_seed(cfg.seed)
    return model_class(cfg.arch)(config)


class Trainer:
    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, device: torch.device):
        self.cfg, self.info, self.device = cfg, info, device
        self.out = Path(cfg.out)
        self._stop_signal: str | None = None
        self.bar = None

    # ------------------------------------------------------------------ output
    def say(self, *parts: Any) -> None:
        if not self.info.is_main:
            return
        text = " ".join(str(p) for p in parts)
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        self.say(f"warning: {text}")

    # ------------------------------------------------------------------ setup
    def run(self) -> TrainResult:
        previous_handlers = self.install_signal_handlers()
        try:
            self.setup()
            return self.loop()
        finally:
            self.restore_signal_handlers(previous_handlers)

    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls outside autocast
        self.resume_dir = Path(cfg.resume) if cfg.resume else None
        self.resume_state = ckpt.read_trainer_state(self.resume_dir) if self.resume_dir else None
        if info.is_main:
            ckpt.claim_run_dir(cfg, self.resume_state)

        self.check_cuda_graph()
        self.load_data()
        self.build_model()
        self.build_optimizer()
        self.batches = self.make_batches()
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.saved_step = -1  # the step of the newest checkpoint this run wrote or resumed from
        if self.resume_state:
            self.load_trainer_state()
        self.prepare_out_dir()
        self.logger = MetricsLogger(self.out / LOGS, enabled=info.is_main, tensorboard=cfg.tensorboard,
                                    resume_step=self.step if self.resume_state else None)
        self.autocast = self.make_autocast()
        self.lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)

    def load_data(self) -> None:
        """The corpus, or the mixture of corpora (``--data A:0.7,B:0.3``): manifests checked
        (one tokenizer for all), train splits opened, and each source's validation split."""
        from mossnet.data import read_manifest
        from mossnet.data.mixture import parse_data_sources

        cfg = self.cfg
        self.sources = parse_data_sources(cfg.data)
        self.data_dir = self.sources[0].path  # the tokenizer and the sample prompt come from here
        manifests = [read_manifest(s.path) for s in self.sources]
        self.manifest = manifests[0]
        for source, manifest in zip(self.sources[1:], manifests[1:]):
            if _tokenizer_id(source.path, manifest) != _tokenizer_id(self.data_dir, self.manifest):
                raise DataError(f"--data mixes corpora prepared with different tokenizers: {self.data_dir} and "
                                f"{source.path}; prepare both with the same --tokenizer")
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eos_id = self.manifest.get("eos_id")
        self.train_sets = [self.open_train(s.path) for s in self.sources]
        self.train_tokens = self.train_sets[0]  # the bigram baseline is fitted on the first source
        self.val_sets = [v for v in (self.open_val(s.path, m) for s, m in zip(self.sources, manifests)) if v]
        self.val_split, self.val_tokens, self.val_bytes = (self.val_sets[0][1:] if self.val_sets else (None, None, 0))
        identities = [ckpt.data_identity(m) for m in manifests]
        self.data_identity = (identities[0] if len(identities) == 1 else
                              ckpt.mixture_identity(identities, [s.weight for s in self.sources]))
        if len(self.sources) > 1:
            self.say("data mixture: " + ", ".join(f"{s.path} ({s.weight:.0%}, {len(t):,} train tokens)"
                                                  for s, t in zip(self.sources, self.train_sets)))

    def open_train(self, path: str):
        from mossnet.data import open_split

        tokens = open_split(path, "train")
        if len(tokens) < self.cfg.seq_len + 1:
            raise DataError(f"the train split of {path} has {len(tokens)} tokens, fewer than "
                            f"one sequence (seq_len={self.cfg.seq_len} + 1)")
        return tokens

    def open_val(self, path: str, manifest: dict[str, Any]):
        """``(source name, split name, tokens, bytes)`` of a corpus' validation split, or None
        (with a warning) when it has none long enough for one window."""
        from mossnet.data import open_split

        splits = manifest.get("splits", {})
        split = "val" if "val" in splits else ("test" if "test" in splits else None)
        if split is None:
            self.warn(f"{path} has no validation split: no validation loss will be reported for it")
            return None
        tokens = open_split(path, split)
        if len(tokens) < self.cfg.seq_len + 1:
            self.warn(f"the {split} split of {path} has {len(tokens)} tokens, fewer than one window "
                      f"(seq_len={self.cfg.seq_len} + 1): no validation loss will be reported for it")
            return None
        return Path(path).name, split, tokens, int(splits.get(split, {}).get("bytes", 0))

    def build_model(self) -> None:
        cfg, info = self.cfg, self.info
        if self.resume_dir:
            config = self.checkpoint_config(self.resume_dir / MODEL)
            model = build_model(cfg, config)
            self.load_weights(model, self.resume_dir / MODEL)
        elif cfg.init_from:
            config, model = self.initial_model()
        else:
            config = build_model_config(cfg.arch, cfg.preset, self.vocab_size, cfg.model, cfg.seq_len,
                                        eos_id=self.eos_id)
            model = build_model(cfg, config)
        model.to(self.device)
        self.raw_model = model
        self.params = describe(model)
        self.forward_kwargs = {}
        if "output_router_stats" in inspect.signature(model.forward).parameters:
            self.forward_kwargs["output_router_stats"] = True
        if info.is_main:
            p = self.params
            active = f", {p['active'] / 1e6:.2f}M active per token" if p["active"] != p["total"] else ""
            self.say(f"model: {cfg.arch} ({type(model).__name__}), {p['total'] / 1e6:.2f}M parameters{active}, "
                     f"{p['embedding'] / 1e6:.2f}M in the embedding; "
                     f"d_model={config.hidden_size}, n_layers={config.num_hidden_layers}, vocab={config.vocab_size}")
        wrapped = model
        if info.fsdp:
            wrapped = distributed.wrap(model, info, self.device)
            if cfg.compile:
                wrapped = torch.compile(wrapped)
        else:
            if cfg.compile:
                wrapped = torch.compile(model)
            wrapped = distributed.wrap(wrapped, info, self.device)
        self.model = wrapped

    def initial_model(self):
        """``--init-from``: the model in that directory (verified), with this run's shape-keeping
        overrides applied; training starts at step 0 with a fresh optimizer."""
        from mossnet.rundir.load import load_model

        cfg = self.cfg
        source = load_model(cfg.init_from, dtype=torch.float32)
        config = source.config
        if config.model_type != MODEL_TYPES[cfg.arch]:
            raise ConfigError(f"--init-from {cfg.init_from} holds a {config.model_type!r} model but --arch is "
                              f"{cfg.arch!r}")
        if config.vocab_size < self.vocab_size:
            raise CheckpointError(f"--init-from {cfg.init_from} has a vocabulary of {config.vocab_size} tokens but "
                                  f"{cfg.data} uses {self.vocab_size}: prepare the data with that model's tokenizer "
                                  f"(mossnet prepare-data --tokenizer {cfg.init_from})")
        changed = {}
        for key, value in cfg.model.items():
            if _differs(getattr(config, key, None), value):
                if key not in SHAPE_KEEPING:
                    raise ConfigError(f"model.{key}={value!r} would change the model of --init-from {cfg.init_from} "
                                      f"({key}={getattr(config, key, None)!r}); only these keep its tensors: "
                                      f"{', '.join(SHAPE_KEEPING)}")
                changed[key] = value
        if changed:
            config = type(config).from_dict({**config.to_dict(), **changed})
            self.say("--init-from overrides: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))
        model = build_model(cfg, config)
        model.load_state_dict(source.state_dict(), strict=True)
        self.say(f"initialised from {cfg.init_from} (fresh optimizer and schedule)")
        return config, model

    def checkpoint_config(self, path: Path):
        """The model config stored in a checkpoint, checked against this run's data and options."""
        from transformers import AutoConfig

        import mossnet.models.mossnet  # noqa: F401  (registers the MossNet config with AutoConfig)

        try:
            config = AutoConfig.from_pretrained(path)
        except Exception as err:
            raise ckpt.CheckpointError(f"{path}/config.json cannot be read: {err}") from None
        want = MODEL_TYPES[self.cfg.arch]
        if config.model_type != want:
            raise ckpt.CheckpointError(f"{path} holds a {config.model_type!r} model but --arch is {self.cfg.arch!r}")
        if config.vocab_size < self.vocab_size:
            raise ckpt.CheckpointError(
                f"{path} has a vocabulary of {config.vocab_size} tokens but {self.cfg.data} has {self.vocab_size}: "
                "the data was prepared with a different tokenizer")
        ours, theirs = path / "tokenizer.json", Path(self.data_dir) / "tokenizer" / "tokenizer.json"
        if ours.is_file() and theirs.is_file() and ckpt.sha256(ours) != ckpt.sha256(theirs):
            raise ckpt.CheckpointError(f"the tokenizer in {path} differs from the one in {self.data_dir}/tokenizer")
        for key, value in self.cfg.model.items():
            if hasattr(config, key) and _differs(getattr(config, key), value):
                raise ckpt.CheckpointError(f"{path} has {key}={getattr(config, key)!r} but this run asks for "
                                           f"model.{key}={value!r}; a checkpoint's architecture cannot change")
        return config

    def load_weights(self, model: nn.Module, path: Path) -> None:
        files = sorted(path.glob("model*.safetensors"))
        if not files:
            raise ckpt.CheckpointError(f"{path} has no model weights (model.safetensors is missing)")
        state = {}
        for f in files:
            state.update(ckpt._load_safetensors(f))
        aliases = _tied_aliases(model)
        missing, unexpected = [], []
        own = model.state_dict()
        for name, tensor in state.items():
            if name not in own:
                unexpected.append(name)
            elif tuple(tensor.shape) != tuple(own[name].shape):
                raise ckpt.CheckpointError(f"{path}: weight {name} has shape {tuple(tensor.shape)} in the "
                                           f"checkpoint but {tuple(own[name].shape)} in the model")
        for name in own:
            if name not in state and not any(a in state for a in aliases.get(name, ())):
                missing.append(name)
        if missing or unexpected:
            raise ckpt.CheckpointError(f"{path}: the weights do not match the model config (missing: "
                                       f"{missing[:5]}, unexpected: {unexpected[:5]})")
        model.load_state_dict(state, strict=False)

    def build_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = build_optimizer(self.raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
        self.group_names = group_param_names(self.raw_model, self.optimizer)

    def make_batches(self) -> "MicroBatches":
        cfg, info = self.cfg, self.info
        return MicroBatches(self.train_sets, [s.weight for s in self.sources], cfg.batch_size, cfg.seq_len, cfg.seed,
                            cfg.grad_accum,
                            info.rank, info.world_size, self.vocab_size)

    def load_trainer_state(self) -> None:
        cfg, info, path, state = self.cfg, self.info, self.resume_dir, self.resume_state
        opt = ckpt.read_optimizer_state(path)
        shapes = {n: tuple(p.shape) for n, p in self.raw_model.named_parameters()}
        ckpt.check_optimizer_state(opt, self.group_names, shapes, str(path))
        try:
            distributed.load_full_optimizer_state(self.raw_model, self.optimizer, opt["optimizer"], info)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ckpt.CheckpointError(f"{path}: the optimizer state cannot be loaded: {err}") from None
        restore_implementation(self.optimizer)
        for group in self.optimizer.param_groups:  # this run's hyper-parameters win
            group["betas"] = (cfg.beta1, cfg.beta2)
            group["eps"] = cfg.eps
            group["weight_decay"] = cfg.weight_decay if group.get("name") == "decay" else 0.0
        self.check_resume_changes(state)
        saved_world = int(state.get("world_size", 1))
        saved_micro = saved_world * int(state.get("grad_accum", cfg.grad_accum))
        if saved_micro != info.world_size * cfg.grad_accum or state.get("batch_size", cfg.batch_size) != cfg.batch_size:
            self.warn(f"the checkpoint was trained with {saved_micro} micro-batches of {state.get('batch_size')} "
                      f"per step, this run uses {info.world_size * cfg.grad_accum} of {cfg.batch_size}: training "
                      "continues, but on other batches than the original run would have seen")
        rank_state = ckpt.read_rank_state(path, info.rank if info.rank < saved_world else 0)
        if rank_state is None:
            raise ckpt.CheckpointError(f"{path}: the trainer state of rank {info.rank} is missing")
        try:
            self.batches.load_state_dict(rank_state["data"])
        except (ValueError, KeyError, TypeError) as err:
            raise ckpt.CheckpointError(f"{path}: the data position does not fit this run: {err}") from None
        ckpt.restore_rng(rank_state["rng"])
        self.step = int(state["step"])
        if path.resolve() == self.out.resolve():
            self.saved_step = self.step  # that checkpoint is this run's newest
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.say(f"resumed from {path} at step {self.step} ({self.tokens_seen:,} tokens seen)")
        if self.step >= cfg.max_steps:
            self.warn(f"the checkpoint is at step {self.step} and max_steps is {cfg.max_steps}: nothing to train")

    def check_resume_changes(self, state: dict[str, Any]) -> None:
        """A resumed run continues the recorded one: other data, seq_len or preset is refused
        unless --allow-change, and an allowed change is printed."""
        cfg = self.cfg
        recorded = {"data": state.get("data", {}).get("identity"), "seq_len": state.get("seq_len"),
                    "preset": state.get("preset")}
        recorded = {k: v for k, v in recorded.items() if v is not None}
        changes = ckpt.resume_changes(recorded, {"data": self.data_identity, "seq_len": cfg.seq_len,
                                                 "preset": cfg.preset})
        if changes and not cfg.allow_change:
            raise ConfigError(f"resuming {self.resume_dir} with changes: {'; '.join(changes)}; pass --allow-change "
                              "to accept them (the run then no longer continues the recorded one exactly)")
        for change in changes:
            self.warn(f"allowed change on resume: {change}")

    def prepare_out_dir(self) -> None:
        if not self.info.is_main:
            return
        write_marker(self.out, "train")
        (self.out / LOGS).mkdir(exist_ok=True)
        if self.resume_dir and self.resume_dir.resolve() != self.out.resolve():
            for name in ("metrics.jsonl", "metrics.csv"):  # continue the old run's logs
                if (self.resume_dir / LOGS / name).is_file():
                    shutil.copy2(self.resume_dir / LOGS / name, self.out / LOGS / name)

    def make_autocast(self):
        return autocast_factory(self.device, self.cfg.dtype, capture=self.cfg.cuda_graph)

    def check_cuda_graph(self) -> None:
        """``--cuda-graph`` needs one CUDA process and an eager model (torch.compile captures its own)."""
        cfg, info = self.cfg, self.info
        if not cfg.cuda_graph:
            return
        if self.device.type != "cuda":
            raise DeviceError(f"--cuda-graph needs a CUDA device; this run is on {self.device} "
                              "(pass --no-cuda-graph, e.g. when resuming a GPU run on the CPU)")
        if info.enabled:
            raise ConfigError("--cuda-graph runs in a single process; under torchrun (DDP/FSDP2) train without it")

    # ------------------------------------------------------------------ the loop
    def loop(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        tokens_per_step = cfg.tokens_per_step(info.world_size)
        result = TrainResult(step=self.step, status="done", out=str(self.out))
        self.bigram = self.fit_bigram() if info.is_main else None
        if info.is_main:
            self.say(f"training {cfg.max_steps - self.step} steps of {tokens_per_step:,} tokens "
                     f"({info.world_size} x {cfg.grad_accum} x {cfg.batch_size} x {cfg.seq_len}) on {self.device}"
                     + (f" with {'FSDP2' if info.fsdp else 'DDP'}" if info.enabled else ""))
        self.bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=1.0,
                        disable=not (info.is_main and cfg.progress), file=sys.stdout)
        self.collapsed: set[str] = set()
        window = _new_window()
        self.last_checkpoint = (self.resume_dir, self.step) if self.resume_dir else None
        try:
            self.model.train()
            self.suggest_cuda_graph()
            self.captured_step = self.make_captured_step() if cfg.cuda_graph else None
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                if self.captured_step is not None:
                    loss, ce, aux, grad_norm, stop, load = self.captured_train_step()
                else:
                    loss, ce, aux, grad_norm, stop, load = self.eager_train_step()
                self.step += 1
                self.tokens_seen += tokens_per_step
                dt = time.perf_counter() - t0
                self.elapsed += dt
                result.losses.append(loss)
                result.grad_norms.append(grad_norm)
                window["loss"] += loss
                window["ce"] += ce
                window["aux"] += aux
                window["grad_norm"] += grad_norm
                window["steps"] += 1
                window["time"] += dt
                for name, counts in load.items():
                    window["load"][name] = window["load"].get(name, 0) + counts
                self.bar.update(1)

                if self.step % max(cfg.log_interval, 1) == 0 or self.step == cfg.max_steps:
                    self.log_train(window, tokens_per_step)
                    window = _new_window()
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step < cfg.max_steps:
                    self.validate(cfg.eval_tokens or None)
                if stop:
                    break
                if cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0 and self.step < cfg.max_steps:
                    self.save()
        finally:
            self.bar.close()
            self.bar = None
        result.step = self.step
        self.save_if_new()  # the final state is on disk before anything else can go wrong
        if not self._stop_signal:
            result.final = self.finish()
        if not self._stop_signal:
            result.sample = self.sample()
        if self._stop_signal:
            result.status = "terminated" if "SIGTERM" in self._stop_signal else "interrupted"
            self.say(f"{self._stop_signal}: stopped with the checkpoint of step {self.saved_step} in {self.out}")
        self.logger.close()
        return result

    def micro_loss(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """One micro-batch's forward under autocast: (loss, cross-entropy, aux loss or None,
        {router name: (E,) tokens per expert})."""
        with self.autocast():
            out = self.model(input_ids=input_ids, **self.forward_kwargs)
            ce, aux = lm_and_aux_loss(out, labels)
            loss = ce + aux if aux is not None else ce
        return loss, ce, aux, getattr(out, "router_load", None) or {}

    def eager_train_step(self):
        """One optimizer step, eagerly: forward/backward over the micro-batches, clipping, and
        AdamW, which is not applied when the loss or gradient norm is not finite (training stops)."""
        loss, ce, aux, stop, load = self.train_step()
        grad_norm = self.clip_gradients()
        if not all(math.isfinite(x) for x in (loss, ce, aux, grad_norm)):
            self.diverged(loss, ce, aux, grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, ce, aux, grad_norm, stop, load

    def suggest_cuda_graph(self) -> None:
        cfg = self.cfg
        if (self.device.type == "cuda" and not self.info.enabled and not cfg.cuda_graph and not cfg.compile
                and cfg.arch == "mossnet"):
            self.say("tip: --cuda-graph replays the whole step from a CUDA graph; MossNet's eager step is bound by "
                     "kernel launches (docs/TRAINING.md)")

    def make_captured_step(self) -> CapturedTrainStep:
        self.say("the training step is captured in a CUDA graph after 2 eager steps (--cuda-graph)")
        return CapturedTrainStep(self.raw_model, self.optimizer, self.micro_loss, grad_clip=self.cfg.grad_clip)

    def captured_train_step(self):
        """One optimizer step replayed from a CUDA graph (``train/cuda_graph_step.py``): the same
        work as ``eager_train_step`` in one launch; a non-finite step is skipped inside the graph."""
        cfg = self.cfg
        self.set_lr(lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
        micro = [next(self.batches) for _ in range(cfg.grad_accum)]
        input_ids = torch.as_tensor(np.stack([m[0] for m in micro]))
        labels = torch.as_tensor(np.stack([m[1] for m in micro]))
        stats, load = self.captured_step(input_ids, labels)
        loss, ce, aux, grad_norm = stats.tolist()
        if not all(math.isfinite(x) for x in (loss, ce, aux, grad_norm)):
            self.diverged(loss, ce, aux, grad_norm)
        return loss, ce, aux, grad_norm, self._stop_signal, load

    def train_step(self) -> tuple[float, float, float, str | None, dict[str, torch.Tensor]]:
        """Forward and backward over grad_accum micro-batches. Returns the step's mean loss, cross-
        entropy and aux loss (averaged over ranks), a stop reason if any rank got a signal, and the
        router load summed over micro-batches (this rank's; reduced at log time)."""
        cfg, info = self.cfg, self.info
        self.set_lr(lr_at(self.step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
        sums = torch.zeros(3, device=self.device, dtype=torch.float32)
        load: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            input_ids, labels = next(self.batches)
            input_ids = torch.as_tensor(input_ids).to(self.device, non_blocking=True)
            labels = torch.as_tensor(labels).to(self.device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            with distributed.no_grad_sync(self.model, info, skip=not last):
                loss, ce, aux, micro_load = self.micro_loss(input_ids, labels)
                (loss / cfg.grad_accum).backward()
            sums = add_micro_batch(sums, load, loss, ce, aux, micro_load)
        flag = 1.0 if self._stop_signal else 0.0
        packed = torch.cat([sums / cfg.grad_accum, sums.new_tensor([flag])])
        if info.enabled:
            packed = info.all_reduce_sum(packed)
            packed[:3] /= info.world_size
        loss, ce, aux, flag = packed.tolist()
        stop = (self._stop_signal or "stop requested on another rank") if flag > 0 else None
        return loss, ce, aux, stop, load

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        set_lr(self.optimizer, lr)

    def clip_gradients(self) -> float:
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm)

    def diverged(self, loss, ce, aux, grad_norm) -> None:
        what = "loss" if not all(math.isfinite(x) for x in (loss, ce, aux)) else "gradient norm"
        if self.last_checkpoint:
            path, step = self.last_checkpoint
            kept = f"the last good checkpoint (step {step}) is kept in {path}"
        else:
            kept = "no checkpoint had been written yet"
        msg = (f"training diverged at step {self.step + 1}: the {what} is not finite (loss={loss}, "
               f"cross-entropy={ce}, aux={aux}, grad_norm={grad_norm}, lr={self.lr:.3g}). Training stopped "
               f"without applying this step; {kept}. Try a lower --lr, a longer warmup or gradient clipping.")
        self.logger.log({"step": self.step + 1, "split": "diverged", "loss": loss, "ce": ce, "aux": aux,
                         "grad_norm": grad_norm})
        raise TrainingDiverged(msg)

    # ------------------------------------------------------------------ logging, validation
    def log_train(self, window: dict, tokens_per_step: int) -> None:
        cfg, info = self.cfg, self.info
        n = max(window["steps"], 1)
        tok_s = n * tokens_per_step / max(window["time"], 1e-9)
        load = self.reduce_router_load(window["load"])
        record = {"step": self.step, "split": "train", "loss": window["loss"] / n, "ce": window["ce"] / n,
                  "aux": window["aux"] / n, "lr": self.lr, "grad_norm": window["grad_norm"] / n,
                  "tokens": self.tokens_seen, "tokens_per_s": tok_s, "elapsed_s": self.elapsed}
        if load:
            record["router_load"] = load
        if info.is_main:
            self.logger.log(record)
            self.bar.set_postfix(loss=f"{record['ce']:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{self.lr:.2e}", refresh=False)
            self.check_router_collapse(load)

    def reduce_router_load(self, load: dict[str, torch.Tensor]) -> dict[str, list[float]]:
        """Per-router fraction of dispatches per expert over the window, summed over ranks."""
        if not load:
            return {}
        names = sorted(load)
        flat = torch.cat([load[n].flatten() for n in names])
        flat = self.info.all_reduce_sum(flat).cpu()
        out, i = {}, 0
        for name in names:
            e = load[name].numel()
            counts = flat[i:i + e]
            i += e
            out[name] = (counts / counts.sum().clamp_min(1)).tolist()
        return out

    def check_router_collapse(self, load: dict[str, list[float]]) -> None:
        ratio = self.cfg.router_collapse_ratio
        for name, frac in load.items():
            e = len(frac)
            if e < 2:
                continue
            p = np.asarray(frac, dtype=np.float64)
            p = p[p > 0]
            n_eff = float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0
            if n_eff < ratio * e and name not in self.collapsed:
                self.collapsed.add(name)
                top = ", ".join(f"{x:.2f}" for x in frac)
                self.warn(f"router {name} has collapsed onto {n_eff:.1f} of {e} experts at step {self.step} "
                          f"(load per expert: {top}); consider a larger router_aux_loss_coef")
            elif n_eff >= ratio * e and name in self.collapsed:
                self.collapsed.discard(name)
                self.say(f"router {name} recovered ({n_eff:.1f} effective experts of {e})")

    def validate(self, max_tokens: int | None, progress: bool = False) -> dict[str, Any] | None:
        """Validation loss / perplexity / bits per byte on (the start of) each source's validation
        split; returns the first source's. Rank 0 computes it (every rank under FSDP, whose forward
        is collective)."""
        first = None
        for name, _, tokens, n_bytes in self.val_sets:
            result = self.validate_one(tokens, n_bytes, max_tokens, progress,
                                       name if len(self.sources) > 1 else None)
            first = first or result
        return first

    def validate_one(self, tokens, n_bytes: int, max_tokens: int | None, progress: bool,
                     source: str | None) -> dict[str, Any] | None:
        from mossnet.eval.perplexity import evaluate_perplexity

        info = self.info
        result = None
        if info.is_main or info.fsdp:
            self.model.eval()
            with torch.no_grad(), self.autocast():
                result = self._evaluate(evaluate_perplexity, tokens, n_bytes, max_tokens, progress)
            self.model.train()
        info.barrier()
        if info.is_main:
            record = {"step": self.step, "split": "val", "loss": result["loss"],
                      "perplexity": result["perplexity"], "bits_per_byte": result["bits_per_byte"],
                      "tokens": result["tokens"], "elapsed_s": self.elapsed}
            if source:
                record["source"] = source
            self.logger.log(record)
            self.say(f"step {self.step}: val loss {result['loss']:.4f}, ppl {result['perplexity']:.2f}, "
                     f"{result['bits_per_byte']:.4f} bits/byte ({result['tokens']:,} tokens)"
                     + (f" [{source}]" if source else ""))
        return result

    def _evaluate(self, evaluate_perplexity, tokens, n_bytes: int, max_tokens: int | None,
                  progress: bool = False) -> dict[str, Any]:
        """The whole split, or ``max_tokens`` of it taken as ``VAL_SEGMENTS`` evenly spaced segments
        (the start of a split alone can be unrepresentative: a corpus split by whole documents
        begins with one document)."""
        cfg = self.cfg
        kwargs = dict(seq_len=cfg.seq_len, stride=cfg.seq_len, batch_size=cfg.batch_size, device=self.device,
                      progress=progress and self.info.is_main)
        n = len(tokens)
        if not max_tokens or max_tokens >= n:
            return evaluate_perplexity(self.raw_model, tokens, n_bytes, **kwargs)
        segments = max(1, min(VAL_SEGMENTS, max_tokens // (cfg.seq_len + 1)))
        length = max_tokens // segments
        starts = np.linspace(0, n - length, segments).astype(np.int64)
        nats = scored = 0.0
        for start in starts:
            part = tokens[start:start + length]
            r = evaluate_perplexity(self.raw_model, part, max(1, round(n_bytes * length / n)), **kwargs)
            nats += r["loss"] * r["tokens"]
            scored += r["tokens"]
        loss = nats / scored
        est_bytes = n_bytes * segments * length / n
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nats / math.log(2) / est_bytes,
                "tokens": int(scored)}

    def fit_bigram(self) -> dict[str, float] | None:
        if self.val_tokens is None:
            return None
        from mossnet.data import bigram_cross_entropy, fit_bigram

        bigram = fit_bigram(self.train_tokens, self.vocab_size)
        loss = float(bigram_cross_entropy(bigram, self.val_tokens))
        tokens = len(self.val_tokens)
        bpb = loss / math.log(2) * (tokens - 1) / self.val_bytes if self.val_bytes else float("nan")
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": bpb}

    # ------------------------------------------------------------------ checkpoints
    def save_if_new(self) -> None:
        if self.saved_step != self.step:
            self.save()

    def save(self) -> None:
        """Write a checkpoint of this step; a failure (a full disk) leaves the previous one intact."""
        from safetensors import SafetensorError

        try:
            self._save()
        except (OSError, SafetensorError) as err:  # safetensors reports a failed write as its own error
            kept = (f"the checkpoint of step {self.saved_step} is intact" if self.saved_step >= 0
                    else "no checkpoint had been written yet")
            reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
            raise SaveFailed(f"saving the checkpoint of step {self.step} to {self.out} failed "
                             f"({reason}); {kept}") from None
        self.saved_step = self.step

    def _save(self) -> None:
        cfg, info = self.cfg, self.info
        model_state = distributed.full_model_state(self.raw_model, info) if info.fsdp else None
        opt_state = distributed.full_optimizer_state(self.raw_model, self.optimizer, info)
        if opt_state is not None:
            opt_state = float_learning_rates(opt_state)

        def write_model(tmp: Path) -> None:
            if model_state is not None:
                self.raw_model.save_pretrained(tmp, state_dict=model_state)
            else:
                self.raw_model.save_pretrained(tmp)
            ckpt.copy_tokenizer(self.data_dir, tmp)
            self.write_card(tmp)
            trainer_dir = tmp.parent / TRAINER
            trainer_dir.mkdir(exist_ok=True)
            save_yaml(cfg, trainer_dir / ckpt.CONFIG_FILE)

        state = {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed,
                 "world_size": info.world_size, "grad_accum": cfg.grad_accum, "batch_size": cfg.batch_size,
                 "seq_len": cfg.seq_len, "arch": cfg.arch, "preset": cfg.preset, "lr": self.lr,
                 "data": {"dir": str(cfg.data), "identity": self.data_identity,
                          "train_tokens": int(len(self.train_tokens))}}
        optimizer_state = {"optimizer": opt_state, "param_names": self.group_names} if opt_state is not None else None
        rank_state = {"data": self.batches.state_dict(), "rng": ckpt.capture_rng()}
        with _quiet_transformers():
            ckpt.save_checkpoint(self.out, rank=info.rank, barrier=info.barrier, write_model=write_model,
                                 state=state, optimizer_state=optimizer_state, rank_state=rank_state,
                                 announce=self.say)
        self.last_checkpoint = (self.out, self.step)

    def write_card(self, model_dir: Path, results: dict[str, Any] | None = None) -> None:
        from mossnet.rundir.model_card import command_line, write_model_card

        write_model_card(model_dir, config=self.raw_model.config, params=self.params, made_by=command_line(),
                         data=self.manifest, tokens_seen=self.tokens_seen, results=results)

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_signal:  # second signal: stop now; the last complete checkpoint stays
                raise KeyboardInterrupt
            self._stop_signal = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"received {name}"
            if self.info.is_main:
                print(f"\n{name}: finishing this step, then saving a checkpoint (a second signal quits at once; "
                      "the last complete checkpoint is kept)", file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        return previous

    def restore_signal_handlers(self, previous) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        """After the final checkpoint: validation on the whole split, next to the bigram baseline,
        and the loss curve."""
        cfg, info = self.cfg, self.info
        final = {}
        self.say(f"checkpoint: {self.out} (step {self.step}, {self.tokens_seen:,} tokens, "
                 f"{self.elapsed:.0f} s of training)")
        val = self.validate(None, progress=cfg.progress)
        if self._stop_signal:
            return final
        if info.is_main:
            if val is not None:
                final["model"] = {k: val[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")}
            if self.bigram is not None:
                final["bigram"] = self.bigram
            self.report(final)
            if final:  # the card of the final checkpoint gains its results (README.md is not checksummed)
                self.write_card(self.out / MODEL, {f"validation ({self.val_split})" if k == "model" else
                                                   "bigram baseline": v for k, v in final.items()})
            if cfg.plot:
                from .plots import plot_loss_curve

                note = plot_loss_curve(read_jsonl(self.out / LOGS / "metrics.jsonl"), self.out / LOGS / "loss_curve.png",
                                       bigram_loss=self.bigram["loss"] if self.bigram else None,
                                       title=f"{cfg.arch} {cfg.preset}: {self.step} steps")
                self.say(note or f"loss curve: {self.out / LOGS / 'loss_curve.png'}")
            self.logger.log({"step": self.step, "split": "final", **{f"{k}_{m}": v for k, d in final.items()
                                                                     for m, v in d.items()}})
        return final

    def report(self, final: dict[str, Any]) -> None:
        lines = [f"{'':26s}{'loss':>8s}{'ppl':>10s}{'bits/byte':>11s}"]
        names = {"model": f"{self.cfg.arch} (validation)", "bigram": "bigram baseline"}
        for key in ("model", "bigram"):
            if key in final:
                r = final[key]
                lines.append(f"{names[key]:26s}{r['loss']:8.4f}{r['perplexity']:10.2f}{r['bits_per_byte']:11.4f}")
        if "model" in final and "bigram" in final:
            better = final["model"]["loss"] < final["bigram"]["loss"]
            lines.append("the model beats the bigram baseline" if better else
                         "warning: the model does not beat the bigram baseline yet (train longer?)")
        self.say("\n".join(lines))

    def sample(self) -> str:
        cfg, info = self.cfg, self.info
        if not cfg.sample_tokens or not info.is_main:
            return ""
        model = self.raw_model
        if info.fsdp:
            # FSDP2 leaves sharded DTensor weights in the model, and the decode step runs the
            # layers outside their forward hooks; rank 0 samples from the full final checkpoint.
            model = type(self.raw_model).from_pretrained(self.out / MODEL).to(self.device)
        from mossnet.data import load_tokenizer

        tokenizer = load_tokenizer(self.data_dir)
        if cfg.sample_prompt:
            prompt_ids = tokenizer(cfg.sample_prompt, return_tensors="pt").input_ids
        else:
            source = self.val_tokens if self.val_tokens is not None else self.train_tokens
            prompt_ids = torch.as_tensor(np.asarray(source[:12], dtype=np.int64))[None]
        torch.manual_seed(cfg.seed)
        model.eval()
        with torch.no_grad(), self.autocast():
            out = model.generate(prompt_ids.to(self.device), max_new_tokens=cfg.sample_tokens,
                                          do_sample=True, temperature=0.8, top_p=0.95,
                                          pad_token_id=self.eos_id, eos_token_id=self.eos_id)
        text = tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
        self.say("sample:\n" + text)
        return text


def lm_and_aux_loss(out, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy of ``out.logits`` against already-shifted ``labels`` (the data pipeline's
    ``labels[:, t]`` is the token after ``input_ids[:, t]``; -100 is ignored), and the model's
    router aux loss if it has one. The labels are not passed to the model: Hugging Face causal
    LMs shift ``labels`` again inside, which would train on the token two steps ahead."""
    logits = out.logits
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                     ignore_index=-100)
    aux = getattr(out, "aux_loss", None)
    return ce, aux


@contextlib.contextmanager
def _quiet_transformers():
    """No "Writing model shards" progress bar inside our own progress bar."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _new_window() -> dict[str, Any]:
    return {"loss": 0.0, "ce": 0.0, "aux": 0.0, "grad_norm": 0.0, "steps": 0, "time": 0.0, "load": {}}


def _tokenizer_id(data_dir: str, manifest: dict[str, Any]) -> str:
    """What names a corpus' tokenizer: the manifest's fingerprint, else its tokenizer.json's hash."""
    fingerprint = manifest.get("tokenizer_fingerprint")
    if fingerprint:
        return str(fingerprint)
    f = Path(data_dir) / "tokenizer" / "tokenizer.json"
    return ckpt.sha256(f) if f.is_file() else f"vocab {manifest.get('vocab_size')}"


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    return a != b


def _tied_aliases(model: nn.Module) -> dict[str, list[str]]:
    """State-dict names that share storage with another name (tied embeddings)."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(id(tensor), []).append(name)
    return {n: [m for m in names if m != n] for names in by_ptr.values() for n in names if len(names) > 1}


def summarize_json(result: TrainResult) -> str:
    return json.dumps({"step": result.step, "status": result.status, "final": result.final})
