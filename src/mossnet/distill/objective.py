"""The distillation losses: attention transfer per layer, and KL on the logits.

Both are ``LossFn`` objects: ``loss(student, input_ids, labels) -> LossParts``. The teacher runs
under ``no_grad`` in eval mode on the same micro-batch. Its per-layer attention inputs and
outputs are captured with forward hooks on each ``self_attn`` module, so any Llama-family model
of transformers works, dense or quantised-then-dequantised (GGUF).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mossnet.errors import ConfigError
from mossnet.train.step import LossParts

STAGES = ("attention", "logits")
TRAINABLE = ("mixers", "all")


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model


def _layers(model: nn.Module):
    return _inner(model).model.layers


class _TeacherTaps:
    """Forward hooks that keep, per teacher layer, the attention's input hidden states (after
    the input norm) and its output (after ``o_proj``), for one forward pass."""

    def __init__(self, teacher: nn.Module):
        self.inputs: list[torch.Tensor | None] = []
        self.outputs: list[torch.Tensor | None] = []
        self.handles = []
        for i, layer in enumerate(_layers(teacher)):
            self.inputs.append(None)
            self.outputs.append(None)
            self.handles.append(layer.self_attn.register_forward_hook(self._hook(i), with_kwargs=True))

    def _hook(self, i: int):
        def hook(module, args, kwargs, output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self.inputs[i] = hidden.detach()
            self.outputs[i] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook


class AttentionTransfer:
    """Stage ``attention``: sum over layers of MSE(student mixer(teacher's attention input),
    teacher's attention output), each layer's MSE divided by the mean square of its target so
    that layers of different scales weigh alike. ``window_metrics()`` returns the per-layer
    relative errors averaged since the last call (the trainer logs them)."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        self.taps = _TeacherTaps(teacher)
        self._sums: torch.Tensor | None = None
        self._count = 0

    def __call__(self, student: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> LossParts:
        with torch.no_grad():
            self.teacher(input_ids=input_ids)
        losses, aux, load = [], [], {}
        config = _inner(student).config
        for i, (layer, u, target) in enumerate(zip(_layers(student), self.taps.inputs, self.taps.outputs)):
            mixed, report, _ = layer.mixer(u.float())
            target = target.float()
            losses.append(F.mse_loss(mixed.float(), target) / target.pow(2).mean().clamp_min(1e-12))
            if report is not None:  # routed students keep their routers balanced, as in training
                aux.append(config.router_aux_loss_coef * report.aux + config.router_z_loss_coef * report.z)
                load[f"layers.{i}.mixer"] = report.load
        per_layer = torch.stack(losses)
        self._sums = per_layer.detach() if self._sums is None else self._sums + per_layer.detach()
        self._count += 1
        aux_loss = torch.stack(aux).mean() if aux else None
        loss = per_layer.sum() + (aux_loss if aux_loss is not None else 0.0)
        return LossParts(loss, per_layer.mean(), aux_loss, load)

    def window_metrics(self) -> dict[str, Any]:
        if self._sums is None:
            return {}
        values = (self._sums / self._count).tolist()
        self._sums, self._count = None, 0
        return {"layer_rel_mse": values}


class LogitDistillation:
    """Stage ``logits``: KL(teacher || student) per token (mean over tokens, at ``temperature``,
    scaled by its square as usual), plus ``ce_weight`` times the next-token cross-entropy."""

    def __init__(self, teacher: nn.Module, ce_weight: float = 0.0, temperature: float = 1.0):
        self.teacher, self.ce_weight, self.temperature = teacher.eval(), ce_weight, temperature

    def __call__(self, student: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> LossParts:
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=input_ids).logits.float()
        out = student(input_ids=input_ids)
        logits = out.logits.float()
        vocab = min(logits.shape[-1], teacher_logits.shape[-1])  # embeddings may be padded past the tokenizer
        kl = kl_divergence(teacher_logits[..., :vocab], logits[..., :vocab], self.temperature)
        loss = kl
        if self.ce_weight:
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
            loss = loss + self.ce_weight * ce
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            loss = loss + aux
        return LossParts(loss, kl, aux, getattr(out, "router_load", None) or {})


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over tokens of KL(softmax(teacher / T) || softmax(student / T)) * T^2.

    >>> x = torch.randn(2, 3, 5)
    >>> float(kl_divergence(x, x)) == 0.0
    True
    """
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    per_token = (t.exp() * (t - s)).sum(-1)
    return per_token.mean() * temperature ** 2


def make_objective(teacher: nn.Module, stage: str, ce_weight: float = 0.0, temperature: float = 1.0):
    if stage == "attention":
        return AttentionTransfer(teacher)
    if stage == "logits":
        return LogitDistillation(teacher, ce_weight, temperature)
    raise ConfigError(f"--stage must be one of {STAGES}, got {stage!r}")


def trainable_filter(stage: str, train: str) -> Callable[[str], bool]:
    """Which student parameters train: the mixers only (stage ``attention``, or ``--train
    mixers``), or everything."""
    if train not in TRAINABLE:
        raise ConfigError(f"--train must be one of {TRAINABLE}, got {train!r}")
    if stage == "attention" or train == "mixers":
        return lambda name: ".mixer." in name
    return lambda name: True
