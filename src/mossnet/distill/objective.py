"""The distillation losses: attention transfer per layer, and KL on the logits.

Both are ``LossFn`` objects: ``loss(student, input_ids, labels) -> LossParts``. The teacher runs
under ``no_grad`` in eval mode on the same micro-batch. The attention stage reads the teacher's
per-layer inputs and attention outputs with ``mossnet.convert.report.capture_teacher`` (forward
hooks), so any Llama-family model of transformers works, dense or dequantised from GGUF.
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


class AttentionTransfer:
    """Stage ``attention``: each student layer's mixer, fed the teacher's residual stream entering
    that layer through the student's own (copied, frozen) ``mixer_norm``, regresses the
    teacher's attention output (``mossnet.convert.report`` captures both and runs the mixers).
    The loss is the sum over layers of the squared relative error (MSE divided by the target's
    mean square, so layers of different scales weigh alike), plus the routers' aux and z losses.
    ``window_metrics()`` returns the per-layer values averaged since the last call (the trainer
    logs them). The sums are device tensors updated in place, never Python numbers: a step
    captured in a CUDA graph (``--cuda-graph``) replays the update without calling this object,
    so anything kept on the Python side would stop changing after the capture."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        self._sums: torch.Tensor | None = None  # (layers,) sum of the per-layer values
        self._count: torch.Tensor | None = None  # () how many micro-batches they sum

    def __call__(self, student: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> LossParts:
        from mossnet.convert.report import capture_teacher, mixer_outputs

        student = _inner(student)
        acts = capture_teacher(self.teacher, input_ids)
        reports: list = []
        outputs = mixer_outputs(student, acts.inputs, reports=reports)
        per_layer = torch.stack([F.mse_loss(out, target) / target.pow(2).mean().clamp_min(1e-12)
                                 for out, target in zip(outputs, acts.attention)])
        config = student.config
        aux = [config.router_aux_loss_coef * r.aux + config.router_z_loss_coef * r.z for r in reports if r is not None]
        load = {f"layers.{i}.mixer": r.load for i, r in enumerate(reports) if r is not None}
        if self._sums is None:
            self._sums = torch.zeros_like(per_layer, dtype=torch.float32)
            self._count = torch.zeros((), dtype=torch.float32, device=per_layer.device)
        self._sums.add_(per_layer.detach().float())
        self._count.add_(1)
        aux_loss = torch.stack(aux).mean() if aux else None  # routed students keep their routers balanced
        loss = per_layer.sum() + (aux_loss if aux_loss is not None else 0.0)
        return LossParts(loss, per_layer.mean(), aux_loss, load)

    def window_metrics(self) -> dict[str, Any]:
        if self._sums is None or self._count.item() == 0:
            return {}
        values = (self._sums / self._count).tolist()
        self._sums.zero_()  # in place: a captured step keeps adding into these same tensors
        self._count.zero_()
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
