"""The model a run trains: fresh from a preset, resumed from its checkpoint, or initialised from
another model's weights (``--init-from``), then wrapped for compile / DDP / FSDP2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from mossnet.errors import CheckpointError, ConfigError

from . import checkpoint as ckpt
from . import distributed
from .baselines import build_model_config, model_class
from .config import TrainConfig
from .training_data import TrainingData

MODEL_TYPES = {"mossnet": "mossnet", "llama": "llama", "mamba2": "mamba2"}
# Model-config fields an --init-from run may change: they keep every tensor's shape.
SHAPE_KEEPING = ("ssm_top_k", "state_update", "router_renormalize", "router_aux_loss_coef", "router_z_loss_coef",
                 "scan_impl", "chunk_size")


def build_model(cfg: TrainConfig, config) -> nn.Module:
    """A freshly initialised model of ``config`` (seeded: identical on every rank)."""
    torch.manual_seed(cfg.seed)
    return model_class(cfg.arch)(config)


def make_model(cfg: TrainConfig, data: TrainingData, resume_dir: Path | None, say: Callable[[str], None]):
    """``(config, model)`` for this run, on the CPU: resumed, ``--init-from``, or fresh."""
    if resume_dir:
        model_dir = resume_dir / "model"
        config = checkpoint_config(cfg, data, model_dir)
        model = build_model(cfg, config)
        load_weights(model, model_dir)
        return config, model
    if cfg.init_from:
        return initial_model(cfg, data, say)
    config = build_model_config(cfg.arch, cfg.preset, data.vocab_size, cfg.model, cfg.seq_len, eos_id=data.eos_id)
    return config, build_model(cfg, config)


def wrap_model(model: nn.Module, cfg: TrainConfig, info: distributed.DistInfo, device: torch.device) -> nn.Module:
    """The module the step calls: compiled and/or DDP / FSDP2-wrapped as the run asks."""
    if info.fsdp:
        wrapped = distributed.wrap(model, info, device)
        return torch.compile(wrapped) if cfg.compile else wrapped
    wrapped = torch.compile(model) if cfg.compile else model
    return distributed.wrap(wrapped, info, device)


def initial_model(cfg: TrainConfig, data: TrainingData, say: Callable[[str], None]):
    """``--init-from``: the model in that directory (verified), with this run's shape-keeping
    overrides applied; training starts at step 0 with a fresh optimizer."""
    from mossnet.rundir.load import load_model

    source = load_model(cfg.init_from, dtype=torch.float32)
    config = source.config
    if config.model_type != MODEL_TYPES[cfg.arch]:
        raise ConfigError(f"--init-from {cfg.init_from} holds a {config.model_type!r} model but --arch is "
                          f"{cfg.arch!r}")
    if config.vocab_size < data.vocab_size:
        raise CheckpointError(f"--init-from {cfg.init_from} has a vocabulary of {config.vocab_size} tokens but "
                              f"{data.data_dir} uses {data.vocab_size}: prepare the data with that model's tokenizer "
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
        say("--init-from overrides: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()))
    model = build_model(cfg, config)
    model.load_state_dict(source.state_dict(), strict=True)
    say(f"initialised from {cfg.init_from} (fresh optimizer and schedule)")
    return config, model


def checkpoint_config(cfg: TrainConfig, data: TrainingData, path: Path):
    """The model config stored in a checkpoint, checked against this run's data and options."""
    from transformers import AutoConfig

    import mossnet.models.mossnet  # noqa: F401  (registers the MossNet config with AutoConfig)

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:
        raise CheckpointError(f"{path}/config.json cannot be read: {err}") from None
    if config.model_type != MODEL_TYPES[cfg.arch]:
        raise CheckpointError(f"{path} holds a {config.model_type!r} model but --arch is {cfg.arch!r}")
    if config.vocab_size < data.vocab_size:
        raise CheckpointError(f"{path} has a vocabulary of {config.vocab_size} tokens but {data.data_dir} has "
                              f"{data.vocab_size}: the data was prepared with a different tokenizer")
    ours, theirs = path / "tokenizer.json", Path(data.data_dir) / "tokenizer" / "tokenizer.json"
    if ours.is_file() and theirs.is_file() and ckpt.sha256(ours) != ckpt.sha256(theirs):
        raise CheckpointError(f"the tokenizer in {path} differs from the one in {data.data_dir}/tokenizer")
    for key, value in cfg.model.items():
        if hasattr(config, key) and _differs(getattr(config, key), value):
            raise CheckpointError(f"{path} has {key}={getattr(config, key)!r} but this run asks for "
                                  f"model.{key}={value!r}; a checkpoint's architecture cannot change")
    return config


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path``'s safetensors into ``model``, refusing missing, unexpected or mis-shaped weights."""
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no model weights (model.safetensors is missing)")
    state = {}
    for f in files:
        state.update(ckpt._load_safetensors(f))
    aliases = _tied_aliases(model)
    own = model.state_dict()
    unexpected = [name for name in state if name not in own]
    for name, tensor in state.items():
        if name in own and tuple(tensor.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{path}: weight {name} has shape {tuple(tensor.shape)} in the "
                                  f"checkpoint but {tuple(own[name].shape)} in the model")
    missing = [name for name in own if name not in state and not any(a in state for a in aliases.get(name, ()))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the weights do not match the model config (missing: "
                              f"{missing[:5]}, unexpected: {unexpected[:5]})")
    model.load_state_dict(state, strict=False)


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
