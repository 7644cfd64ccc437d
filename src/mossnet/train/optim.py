"""AdamW with proper weight-decay groups, and the warmup + cosine learning-rate schedule.

Weight decay applies only to matrices that multiply activations (projections, expert weights).
It never applies to:

* parameters with fewer than 2 dimensions (biases, norm weights, SSM ``A_log``, ``D``, dt bias);
* embeddings (and an LM head tied to them) and any normalisation layer's parameters;
* parameters whose name contains one of ``model.no_weight_decay_keys()`` (the model's own list,
  e.g. per-expert 2-D ``A_log``/``D`` tensors stacked over experts).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or (
        "norm" in name
    )


def split_decay_params(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay, and of those that do not."""
    keys = getattr(model, "no_weight_decay_keys", None)
    extra = list(keys()) if callable(keys) else []
    exempt_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or _is_norm(module):
            exempt_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # shared (tied) parameters appear once
        if not param.requires_grad:
            continue
        if param.ndim < 2 or id(param) in exempt_ids or any(k in name for k in extra):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                    eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over two groups: ``decay`` (weight_decay) and ``no_decay`` (0). Group order and the
    parameter order inside each group are fixed by ``named_parameters``, which the checkpoint
    relies on to map optimizer state back to parameter names."""
    decay, no_decay = split_decay_params(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay, "name": "decay"},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "name": "no_decay"},
    ]
    kwargs = {}
    if fused is not None:
        kwargs["fused"] = fused
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def group_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """For each optimizer group, the names of its parameters, in order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def lr_at(step: int, max_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup from lr/warmup to lr over
    ``warmup_steps`` steps, then a half-cosine down to ``lr * min_lr_ratio`` at ``max_steps``."""
    min_lr = max_lr * min_lr_ratio
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    decay_steps = max(1, max_steps - warmup_steps)
    progress = (step - warmup_steps) / decay_steps
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate. A tensor learning rate (a CUDA-graph-captured step reads
    it, ``train/cuda_graph_step.py``) is written in place; a float one is replaced."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def restore_implementation(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the loaded param groups carry the saving run's implementation
    flags (fused, foreach, capturable) and maybe a tensor learning rate; put back this run's
    flags (the constructor's) and a float learning rate."""
    for group in optimizer.param_groups:
        for key in ("foreach", "fused", "capturable"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])


def float_learning_rates(optimizer_state: dict) -> dict:
    """``optimizer_state`` (a ``state_dict()``) with tensor learning rates as plain floats, so a
    checkpoint's param groups do not depend on how the saving run stepped."""
    groups = [{**g, "lr": float(g["lr"])} if isinstance(g.get("lr"), torch.Tensor) else g
              for g in optimizer_state["param_groups"]]
    return {**optimizer_state, "param_groups": groups}
