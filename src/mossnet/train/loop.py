"""The trainer. Read it top to bottom: ``train(cfg)`` is the whole program.

    claim the run directory -> data (training_data.py) -> model (model_setup.py: fresh, resumed,
    or --init-from) -> parallel wrapper -> AdamW -> resume (checkpoint.Checkpointer) -> loop:
        for each step: lr from the schedule; one StepFn call (step.py: grad_accum micro-batches of
        the loss hook, clipping, AdamW; eager or replayed from a CUDA graph); stop on a
        non-finite loss or gradient; log (router load: router_monitor.py); validate
        (validation.py); checkpoint; stop cleanly on Ctrl-C / SIGTERM (signals.py)
    -> final checkpoint -> final validation next to the bigram baseline -> loss curve -> sample
       (end_of_run.py).

Ctrl-C and SIGTERM are caught from the start to the end of ``run``: the step in flight finishes,
a checkpoint is saved (unless the last one is current), and the run ends with 130 / 143.

The loss is a hook (``step.LossFn``): ``train(cfg, loss_fn=...)`` trains with another loss, a
distillation loss with a teacher for instance, on the same loop. One process, DDP and FSDP2 run
the same code; ``distributed.py`` hides their differences.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from mossnet.errors import ConfigError, DeviceError, MossNetError
from mossnet.models.parameter_count import parameter_counts
from mossnet.rundir import LOGS, MODEL, write_marker
from mossnet.runtime import autocast_factory, resolve_device

from . import checkpoint as ckpt
from . import distributed, end_of_run
from .checkpoint import Checkpointer, RunState, SaveFailed  # noqa: F401  (SaveFailed: part of the API)
from .config import TrainConfig
from .metrics import MetricsLogger
from .model_setup import make_model, wrap_model
from .optim import build_optimizer, group_param_names, lr_at, set_lr
from .router_monitor import RouterMonitor
from .signals import StopSignals
from .step import EagerStep, GraphStep, LossFn, StepStats, lm_loss
from .training_data import MicroBatches, load_training_data
from .validation import Validator


class TrainingDiverged(MossNetError, RuntimeError):
    """The loss or the gradient became NaN/inf; the last good checkpoint was kept."""

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


def train(cfg: TrainConfig, loss_fn: LossFn = lm_loss, trainable: Callable[[str], bool] | None = None) -> TrainResult:
    """Train as ``cfg`` says. ``loss_fn``: the loss of one micro-batch (``step.LossFn``; a
    distillation loss, say). ``trainable(name)``: which parameters train (default: all)."""
    resolve_device(cfg.device)  # one line for a device this machine does not have, before any work
    info, device = distributed.setup(cfg.device, cfg.fsdp)
    try:
        with StopSignals(announce=info.is_main) as signals:
            return Trainer(cfg, info, device, signals, loss_fn, trainable).run()
    finally:
        distributed.teardown(info)


class Trainer:
    """One training run. Every attribute is set here, in ``__init__``: the components (data,
    model, optimizer, checkpointer, validator, router monitor, step function) and ``run``, the
    counters that checkpoints save."""

    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, signals: StopSignals,
                 loss_fn: LossFn = lm_loss, trainable: Callable[[str], bool] | None = None):
        self.cfg, self.info, self.device, self.signals, self.loss_fn = cfg, info, device, signals, loss_fn
        self.out = Path(cfg.out)
        self.bar = None
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls outside autocast
        self.resume_dir = Path(cfg.resume) if cfg.resume else None
        resume_state = None
        if self.resume_dir:  # rank 0 repairs an interrupted save before the others read
            if info.is_main:
                resume_state = ckpt.read_trainer_state(self.resume_dir)
            info.barrier()
            if not info.is_main:
                resume_state = ckpt.read_trainer_state(self.resume_dir, recover=False)
        if info.is_main:
            ckpt.claim_run_dir(cfg, resume_state)
        self.check_cuda_graph()

        self.data = load_training_data(cfg.data, cfg.seq_len, self.warn, self.say)
        config, self.raw_model = make_model(cfg, self.data, self.resume_dir, self.say)
        self.raw_model.to(device)
        for name, param in self.raw_model.named_parameters():
            param.requires_grad_(trainable is None or trainable(name))
        self.params = parameter_counts(self.raw_model)
        self.announce_model(config)
        self.model = wrap_model(self.raw_model, cfg, info, device)
        self.optimizer = build_optimizer(self.raw_model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
        self.group_names = group_param_names(self.raw_model, self.optimizer)
        self.batches = MicroBatches(self.data.train_sets, [s.weight for s in self.data.sources], cfg.batch_size,
                                    cfg.seq_len, cfg.seed, cfg.grad_accum, info.rank, info.world_size,
                                    self.data.vocab_size)
        self.run_state = RunState()
        self.checkpointer = Checkpointer(cfg, info, self.data, self.say)
        if resume_state:
            self.checkpointer.restore(self.resume_dir, resume_state, self.run_state, self.raw_model, self.optimizer,
                                      self.group_names, self.batches)
        self.prepare_out_dir()
        self.logger = MetricsLogger(self.out / LOGS, enabled=info.is_main, tensorboard=cfg.tensorboard,
                                    resume_step=self.run_state.step if resume_state else None)
        self.autocast = autocast_factory(device, cfg.dtype, capture=cfg.cuda_graph)
        self.validator = Validator(self.data, cfg.seq_len, cfg.batch_size, info, device, self.autocast,
                                   self.logger.log, self.say)
        self.router_monitor = RouterMonitor(cfg.router_collapse_ratio, info, self.say)
        self.lr = lr_at(self.run_state.step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.last_checkpoint = (self.resume_dir, self.run_state.step) if self.resume_dir else None
        self.step_fn = None  # built when the loop starts (a CUDA graph is captured on first use)

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

    def announce_model(self, config) -> None:
        p = self.params
        active = f", {p['active'] / 1e6:.2f}M active per token" if p["active"] != p["total"] else ""
        self.say(f"model: {self.cfg.arch} ({type(self.raw_model).__name__}), {p['total'] / 1e6:.2f}M parameters"
                 f"{active}, {p['embedding'] / 1e6:.2f}M in the embedding; d_model={config.hidden_size}, "
                 f"n_layers={config.num_hidden_layers}, vocab={config.vocab_size}")

    # ------------------------------------------------------------------ setup checks
    def check_cuda_graph(self) -> None:
        """``--cuda-graph`` needs one CUDA process and an eager model (torch.compile captures its own)."""
        if not self.cfg.cuda_graph:
            return
        if self.device.type != "cuda":
            raise DeviceError(f"--cuda-graph needs a CUDA device; this run is on {self.device} "
                              "(pass --no-cuda-graph, e.g. when resuming a GPU run on the CPU)")
        if self.info.enabled:
            raise ConfigError("--cuda-graph runs in a single process; under torchrun (DDP/FSDP2) train without it")

    def prepare_out_dir(self) -> None:
        if not self.info.is_main:
            return
        write_marker(self.out, "distill" if self.cfg.distill else "train")
        (self.out / LOGS).mkdir(exist_ok=True)
        if self.resume_dir and self.resume_dir.resolve() != self.out.resolve():
            import shutil

            for name in ("metrics.jsonl", "metrics.csv"):  # continue the old run's logs
                if (self.resume_dir / LOGS / name).is_file():
                    shutil.copy2(self.resume_dir / LOGS / name, self.out / LOGS / name)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, info, run = self.cfg, self.info, self.run_state
        tokens_per_step = cfg.tokens_per_step(info.world_size)
        result = TrainResult(step=run.step, status="done", out=str(self.out))
        self.bigram = self.validator.bigram() if info.is_main else None
        self.say(f"training {cfg.max_steps - run.step} steps of {tokens_per_step:,} tokens "
                 f"({info.world_size} x {cfg.grad_accum} x {cfg.batch_size} x {cfg.seq_len}) on {self.device}"
                 + (f" with {'FSDP2' if info.fsdp else 'DDP'}" if info.enabled else ""))
        self.bar = tqdm(total=cfg.max_steps, initial=run.step, unit="step", dynamic_ncols=True, mininterval=1.0,
                        disable=not (info.is_main and cfg.progress), file=sys.stdout)
        window = _new_window()
        try:
            self.model.train()
            self.step_fn = self.make_step_fn()
            while run.step < cfg.max_steps:
                t0 = time.perf_counter()
                self.set_lr(lr_at(run.step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
                stats = self.step_fn(self.batches)
                if not stats.finite:
                    self.diverged(stats)
                dt = time.perf_counter() - t0
                run.step += 1
                run.tokens_seen += tokens_per_step
                run.elapsed += dt
                result.losses.append(stats.loss)
                result.grad_norms.append(stats.grad_norm)
                _add_to_window(window, stats, dt)
                self.bar.update(1)
                if run.step % max(cfg.log_interval, 1) == 0 or run.step == cfg.max_steps:
                    self.log_train(window, tokens_per_step)
                    window = _new_window()
                if cfg.eval_interval and run.step % cfg.eval_interval == 0 and run.step < cfg.max_steps:
                    self.validate(cfg.eval_tokens or None)
                if stats.stop:
                    break
                if cfg.ckpt_interval and run.step % cfg.ckpt_interval == 0 and run.step < cfg.max_steps:
                    self.save()
        finally:
            self.bar.close()
            self.bar = None
        result.step = run.step
        self.save_if_new()  # the final state is on disk before anything else can go wrong
        if not self.signals.reason:
            result.final = self.finish()
        if not self.signals.reason:
            result.sample = self.sample()
        if self.signals.reason:
            result.status = "terminated" if self.signals.terminated else "interrupted"
            self.say(f"{self.signals.reason}: stopped with the checkpoint of step {run.saved_step} in {self.out}")
        self.logger.close()
        return result

    def make_step_fn(self):
        cfg = self.cfg
        if cfg.cuda_graph:
            self.say("the training step is captured in a CUDA graph after 2 eager steps (--cuda-graph)")
            return GraphStep(self.raw_model, self.optimizer, self.micro_loss, grad_accum=cfg.grad_accum,
                             grad_clip=cfg.grad_clip, stop_reason=lambda: self.signals.reason)
        if self.device.type == "cuda" and not self.info.enabled and not cfg.compile and cfg.arch == "mossnet":
            self.say("tip: --cuda-graph replays the whole step from a CUDA graph; MossNet's eager step is bound by "
                     "kernel launches (docs/TRAINING.md)")
        return EagerStep(self.model, self.raw_model, self.optimizer, self.micro_loss, grad_accum=cfg.grad_accum,
                         grad_clip=cfg.grad_clip, info=self.info, device=self.device,
                         stop_reason=lambda: self.signals.reason)

    def micro_loss(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """One micro-batch of the loss hook, under this run's autocast."""
        with self.autocast():
            return self.loss_fn(self.model, input_ids, labels)

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        set_lr(self.optimizer, lr)

    def diverged(self, stats: StepStats) -> None:
        finite_loss = all(math.isfinite(x) for x in (stats.loss, stats.ce, stats.aux))
        what = "loss" if not finite_loss else "gradient norm"
        if self.last_checkpoint:
            path, step = self.last_checkpoint
            kept = f"the last good checkpoint (step {step}) is kept in {path}"
        else:
            kept = "no checkpoint had been written yet"
        msg = (f"training diverged at step {self.run_state.step + 1}: the {what} is not finite (loss={stats.loss}, "
               f"cross-entropy={stats.ce}, aux={stats.aux}, grad_norm={stats.grad_norm}, lr={self.lr:.3g}). "
               f"Training stopped without applying this step; {kept}. Try a lower --lr, a longer warmup or "
               "gradient clipping.")
        self.logger.log({"step": self.run_state.step + 1, "split": "diverged", "loss": stats.loss, "ce": stats.ce,
                         "aux": stats.aux, "grad_norm": stats.grad_norm})
        raise TrainingDiverged(msg)

    # ------------------------------------------------------------------ logging, validation
    def log_train(self, window: dict, tokens_per_step: int) -> None:
        run = self.run_state
        n = max(window["steps"], 1)
        tok_s = n * tokens_per_step / max(window["time"], 1e-9)
        load = self.router_monitor.reduce(window["load"])
        record = {"step": run.step, "split": "train", "loss": window["loss"] / n, "ce": window["ce"] / n,
                  "aux": window["aux"] / n, "lr": self.lr, "grad_norm": window["grad_norm"] / n,
                  "tokens": run.tokens_seen, "tokens_per_s": tok_s, "elapsed_s": run.elapsed}
        if load:
            record["router_load"] = load
        extras = getattr(self.loss_fn, "window_metrics", None)  # e.g. distillation's per-layer errors
        if extras is not None:
            record.update(extras())
        if self.info.is_main:
            self.logger.log(record)
            self.bar.set_postfix(loss=f"{record['ce']:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{self.lr:.2e}", refresh=False)
            self.router_monitor.check(load, run.step)

    def validate(self, max_tokens: int | None, progress: bool = False) -> dict[str, Any] | None:
        return self.validator.validate(self.model, self.raw_model, self.run_state.step, self.run_state.elapsed,
                                       max_tokens, progress)

    # ------------------------------------------------------------------ checkpoints
    def save_if_new(self) -> None:
        if self.run_state.saved_step != self.run_state.step:
            self.save()

    def save(self) -> None:
        self.checkpointer.save(self.run_state, self.raw_model, self.optimizer, self.group_names, self.batches,
                               self.lr, self.write_card)
        self.last_checkpoint = (self.out, self.run_state.step)

    def write_card(self, model_dir: Path, results: dict[str, Any] | None = None) -> None:
        from mossnet.rundir.model_card import command_line, write_model_card

        write_model_card(model_dir, config=self.raw_model.config, params=self.params, made_by=command_line(),
                         data=self.data.manifest, tokens_seen=self.run_state.tokens_seen, results=results)

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        """After the final checkpoint: validation on the whole split, next to the bigram baseline,
        and the loss curve."""
        cfg, run, final = self.cfg, self.run_state, {}
        self.say(f"checkpoint: {self.out} (step {run.step}, {run.tokens_seen:,} tokens, "
                 f"{run.elapsed:.0f} s of training)")
        val = self.validate(None, progress=cfg.progress)
        if self.signals.reason or not self.info.is_main:
            return final
        if val is not None:
            final["model"] = {k: val[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")}
        if self.bigram is not None:
            final["bigram"] = self.bigram
        self.say(end_of_run.results_table(final, cfg.arch))
        if final:  # the card of the final checkpoint gains its results (README.md is not checksummed)
            split = self.data.primary_val.split if self.data.primary_val else "val"
            self.write_card(self.out / MODEL, {f"validation ({split})" if k == "model" else "bigram baseline": v
                                               for k, v in final.items()})
        if cfg.plot:
            self.say(end_of_run.plot(self.out / LOGS, self.bigram, f"{cfg.arch} {cfg.preset}: {run.step} steps"))
        self.logger.log({"step": run.step, "split": "final",
                         **{f"{k}_{m}": v for k, d in final.items() for m, v in d.items()}})
        return final

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

        val = self.data.primary_val
        text = end_of_run.sample(model, load_tokenizer(self.data.data_dir), cfg.sample_prompt,
                                 val.tokens if val else self.data.train_tokens, tokens=cfg.sample_tokens,
                                 seed=cfg.seed, eos_id=self.data.eos_id, device=self.device, autocast=self.autocast)
        self.say("sample:\n" + text)
        return text


def _new_window() -> dict[str, Any]:
    return {"loss": 0.0, "ce": 0.0, "aux": 0.0, "grad_norm": 0.0, "steps": 0, "time": 0.0, "load": {}}


def _add_to_window(window: dict[str, Any], stats: StepStats, seconds: float) -> None:
    for key in ("loss", "ce", "aux", "grad_norm"):
        window[key] += getattr(stats, key)
    window["steps"] += 1
    window["time"] += seconds
    for name, counts in stats.load.items():
        window["load"][name] = window["load"].get(name, 0) + counts


def summarize_json(result: TrainResult) -> str:
    return json.dumps({"step": result.step, "status": result.status, "final": result.final})
