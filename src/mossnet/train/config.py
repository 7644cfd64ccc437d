"""Training configuration: one dataclass, YAML files and ``key=value`` overrides.

Where a value comes from, lowest priority first:

1. the dataclass defaults below;
2. the training defaults of the chosen preset (``TRAIN_PRESETS``);
3. the configuration saved in the checkpoint, when resuming;
4. a YAML file (``--config file.yaml``): flat keys named as the fields below, plus an optional
   ``model:`` mapping of model-config overrides;
5. explicit command-line flags (``--lr 3e-4``);
6. ``key=value`` overrides (``lr=3e-4 model.d_model=128``).

Every key is checked: an unknown key is an error that suggests the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mossnet.errors import ConfigError
from mossnet.runtime import AUTOCAST_DTYPES as DTYPES

ARCHS = ("mossnet", "llama", "mamba2")


def option(default, help: str, group: str, *, kind: str | None = None, choices: tuple | None = None,
           both: bool = False, metavar: str | None = None):
    """A TrainConfig field that is also a ``mossnet train`` flag (``--field-name``; a boolean that
    defaults to true becomes ``--no-field-name``; ``both`` gives a boolean both spellings).
    ``kind`` names a range-checked type of ``mossnet.cli.argtypes``. Fields made with plain
    ``field``/defaults are set with KEY=VALUE or YAML only."""
    return field(default=default, metadata={"help": help, "group": group, "kind": kind, "choices": choices,
                                            "both": both, "metavar": metavar})


WHERE, BATCH, LOGS, RUN = "what and where", "schedule and batch", "logging and checkpoints", "execution"


@dataclass
class TrainConfig:
    # ---- what to train, on what, where to write it
    arch: str = option("mossnet", "mossnet (default), or a size-matched transformers baseline", WHERE,
                       choices=("mossnet", "llama", "mamba2"))
    preset: str = option("tiny", "model size: tiny | small | base (default tiny)", WHERE)
    model: dict = field(default_factory=dict)  # overrides of the model config (model.KEY=VALUE)
    distill: dict = field(default_factory=dict)  # `mossnet distill`: teacher, stage, train, ce_weight, temperature
    data: str = option("", "a directory written by `mossnet prepare-data`, or a mixture DIR_A:0.7,DIR_B:0.3", WHERE)
    out: str = option("", "run directory: new or empty, or this run's own when resuming (OUT/model is the model)",
                      WHERE)
    resume: str = option("", "continue exactly from this run directory (default --out: DIR)", WHERE, metavar="DIR")
    init_from: str = option("", "start from this model's weights (a run directory, its model/, or a `mossnet "
                            "convert` output) with a fresh optimizer and schedule; only shape-keeping model.* "
                            "overrides apply", WHERE, metavar="DIR")
    force: bool = option(False, "write into a non-empty --out that is not this run's, or over another run "
                         "(MossNet still writes only OUT/model, OUT/trainer, OUT/logs)", WHERE)
    allow_change: bool = option(False, "resume although the data, --seq-len or --preset differ from the "
                                "checkpoint's (each change is printed)", WHERE)

    # ---- batch: one optimizer step sees batch_size * seq_len * grad_accum * world_size tokens
    seq_len: int = option(256, "tokens per training sequence", BATCH, kind="positive_int")
    batch_size: int = option(16, "micro-batch size per process", BATCH, kind="positive_int")
    grad_accum: int = option(1, "micro-batches per optimizer step", BATCH, kind="positive_int")
    max_steps: int = option(1000, "total optimizer steps", BATCH, kind="positive_int")

    # ---- optimizer (AdamW) and schedule (linear warmup, cosine decay to lr * min_lr_ratio)
    lr: float = option(1e-3, "peak learning rate", BATCH, kind="positive_float")
    min_lr_ratio: float = 0.1
    warmup_steps: int = option(100, "steps of linear learning-rate warm-up before the cosine decay", BATCH,
                               kind="nonnegative_int")
    weight_decay: float = option(0.1, "AdamW weight decay (not applied to norms, biases, A_log, D, dt bias)", BATCH,
                                 kind="nonnegative_float")
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = option(1.0, "clip the global gradient norm to this value (0 = no clipping)", BATCH,
                              kind="nonnegative_float")

    # ---- validation, logging, checkpoints
    log_interval: int = option(10, "steps between log records", LOGS, kind="nonnegative_int")
    eval_interval: int = option(200, "steps between validation runs (0 = only at the end)", LOGS,
                                kind="nonnegative_int")
    eval_tokens: int = option(65536, "validation tokens per periodic run (0 = the whole split; otherwise more "
                              "than --seq-len)", LOGS, kind="nonnegative_int")
    ckpt_interval: int = option(500, "steps between checkpoints (0 = only at the end)", LOGS, kind="nonnegative_int")
    sample_tokens: int = 120  # tokens generated at the end of training (0 = no sample)
    sample_prompt: str = ""  # "" = the first tokens of the validation split
    router_collapse_ratio: float = 0.5  # warn when a router's effective expert count < ratio * E
    tensorboard: bool = option(True, "do not write TensorBoard logs (OUT/logs/tensorboard)", LOGS)
    progress: bool = option(True, "no tqdm progress bar", LOGS)
    plot: bool = True  # loss-curve PNG at the end (needs matplotlib)

    # ---- execution
    seed: int = option(1337, "random seed (model init, data order, sampling)", BATCH, kind="seed")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", RUN)
    dtype: str = option("auto", "auto: bf16 autocast on CUDA, fp32 on CPU", RUN, choices=DTYPES)
    compile: bool = option(False, "torch.compile the model", RUN)
    cuda_graph: bool = option(False, "capture the whole training step in a CUDA graph and replay it (one CUDA "
                              "process; removes the per-kernel launch cost)", RUN, both=True)
    fsdp: bool = option(False, "FSDP2 (fully_shard) instead of DDP under torchrun", RUN)
    num_threads: int = option(0, "torch CPU threads (0 = torch's default)", RUN, kind="nonnegative_int")

    def validate(self) -> None:
        """Raise ConfigError naming the first impossible value."""
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "log_interval", "eval_interval", "ckpt_interval",
                     "eval_tokens", "sample_tokens", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if 0 < self.eval_tokens <= self.seq_len:
            raise ConfigError(f"eval_tokens must be 0 (the whole split) or more than seq_len ({self.seq_len}), "
                              f"got {self.eval_tokens}")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise ConfigError(f"eps must be > 0, got {self.eps}")
        if not 0.0 <= self.router_collapse_ratio <= 1.0:
            raise ConfigError(f"router_collapse_ratio must be in [0, 1], got {self.router_collapse_ratio}")
        if self.cuda_graph and self.compile:
            raise ConfigError("cuda_graph and compile are exclusive: torch.compile captures its own graphs; "
                              "pick one (--cuda-graph or --compile)")
        if not self.data:
            raise ConfigError("no data directory: pass --data DIR (a `mossnet prepare-data` output)")
        if not self.out:
            raise ConfigError("no output directory: pass --out DIR")
        if self.init_from and self.resume:
            raise ConfigError("--init-from and --resume exclude each other: --resume continues a run exactly, "
                              "--init-from starts a new one from a model's weights")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_saved_dict(self) -> dict[str, Any]:
        """What a checkpoint records: everything but the waivers of this one invocation."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY}

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.batch_size * self.seq_len * self.grad_accum * world_size


# Training defaults per preset, applied before YAML / flags / overrides. The tiny preset is what
# `make demo` trains: it must learn English from Shakespeare in a few minutes on 2 CPU cores.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(seq_len=128, batch_size=16, lr=3e-3, warmup_steps=50, max_steps=600,
                 eval_interval=100, eval_tokens=16384, ckpt_interval=200, log_interval=10,
                 weight_decay=0.1),
    "small": dict(seq_len=512, batch_size=16, lr=1.5e-3, warmup_steps=200, max_steps=5000,
                  eval_interval=250, ckpt_interval=1000),
    "base": dict(seq_len=1024, batch_size=16, lr=6e-4, warmup_steps=1000, max_steps=50000,
                 eval_interval=1000, ckpt_interval=2000),
}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FLAG_FIELDS = tuple(f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata)  # also `mossnet train` flags
RUN_ONLY = ("force", "allow_change")  # apply to one invocation; never written to a checkpoint


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (often a string from the command line) to the type of field ``name``."""
    default = _FIELDS[name].default
    if name in ("model", "distill"):
        if not isinstance(value, dict):
            raise ValueError(f"{name!r} must be a mapping, got {value!r}")
        return dict(value)
    kind = type(default)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        try:
            if kind is int:
                number = float(text)
                if number != int(number):
                    raise ValueError
                return int(number)
            if kind is float:
                number = float(text)
                if not math.isfinite(number):
                    raise ValueError
                return number
        except ValueError:
            raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if kind is int and isinstance(value, float):
        if value != int(value):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if kind is float and isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
        return float(value)
    if kind is str and value is None:
        return ""
    if not isinstance(value, kind):
        raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def parse_model_value(text: str) -> Any:
    """A model-config override value: int, float, bool, null, a YAML list/mapping, or a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_updates(cfg: TrainConfig, updates: dict[str, Any], source: str) -> TrainConfig:
    """Set fields from a mapping; ``model`` is merged key by key; unknown keys are errors."""
    for key, value in updates.items():
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown training option {key!r}{_suggest(key, _FIELDS)}")
        try:
            value = _coerce(key, value)
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
        if key == "model":
            cfg.model = {**cfg.model, **value}
        else:
            setattr(cfg, key, value)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model.d_model=64"]`` -> ``{"lr": "1e-3", "model": {"d_model": 64}}``."""
    updates: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key.startswith("model."):
            updates.setdefault("model", {})[key[len("model."):]] = parse_model_value(value)
        else:
            updates[key] = value
    return updates


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_saved_dict(), sort_keys=False))


def build_config(
    preset: str | None = None,
    saved: dict[str, Any] | None = None,
    yaml_path: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> TrainConfig:
    """Merge the layers described in the module docstring into one validated ``TrainConfig``."""
    cfg = TrainConfig()
    file_updates = load_yaml(yaml_path) if yaml_path else {}
    flag_updates = {k: v for k, v in (flags or {}).items() if v is not None}
    override_updates = parse_overrides(overrides or [])
    # The preset can itself come from any layer; find the winning value first.
    chosen = preset
    for layer in (saved or {}, file_updates, flag_updates, override_updates):
        chosen = layer.get("preset", chosen)
    chosen = chosen or cfg.preset
    if chosen not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {chosen!r}; choose from {sorted(TRAIN_PRESETS)}")
    cfg.preset = chosen
    apply_updates(cfg, TRAIN_PRESETS[chosen], f"preset {chosen!r}")
    if saved:
        apply_updates(cfg, saved, "saved checkpoint config")
    if file_updates:
        apply_updates(cfg, file_updates, f"config file {yaml_path}")
    apply_updates(cfg, flag_updates, "command line")
    apply_updates(cfg, override_updates, "override")
    cfg.validate()
    from .baselines import validate_model_overrides

    validate_model_overrides(cfg.arch, cfg.model)
    return cfg


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved configuration as YAML (what ``--print-config`` shows)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
