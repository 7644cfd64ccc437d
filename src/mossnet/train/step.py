"""One optimizer step, two ways behind one signature, and the loss hook.

``StepFn``: ``step(batches) -> StepStats`` runs ``grad_accum`` micro-batches (forward, backward),
clips and applies AdamW. The trainer sets the learning rate before calling it and checks the
returned numbers for divergence after it, the same way for both:

* ``EagerStep``: eager PyTorch; under DDP/FSDP the statistics and the stop flag are averaged /
  OR-ed across ranks; a non-finite step is not applied.
* ``GraphStep``: the whole step replayed from a CUDA graph (``cuda_graph_step.py``), one process.

The loss hook: ``LossFn(model, input_ids, labels) -> LossParts`` computes one micro-batch's loss.
``lm_loss`` (cross-entropy + the router aux loss) is the default; a distillation loss with a
teacher plugs in here and reuses the whole trainer (checkpoints, resume, logging, signals).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from . import distributed
from .cuda_graph_step import CapturedTrainStep
from .metrics import add_micro_batch


class LossParts(NamedTuple):
    """One micro-batch's loss (what is back-propagated), its cross-entropy (or main term), its
    auxiliary loss (None when the model has none) and {router name: (E,) tokens per expert}."""

    loss: torch.Tensor
    ce: torch.Tensor
    aux: torch.Tensor | None
    load: dict[str, torch.Tensor]


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], LossParts]


def lm_loss(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> LossParts:
    """Next-token cross-entropy plus the model's router aux loss (the default ``LossFn``).

    ``labels`` are already shifted (the data pipeline's ``labels[:, t]`` is the token after
    ``input_ids[:, t]``; -100 is ignored). They are not passed to the model: Hugging Face causal
    LMs shift ``labels`` again inside, which would train on the token two steps ahead."""
    kwargs = {"output_router_stats": True} if _takes_router_stats(model) else {}
    out = model(input_ids=input_ids, **kwargs)
    ce, aux = lm_and_aux_loss(out, labels)
    return LossParts(ce + aux if aux is not None else ce, ce, aux, getattr(out, "router_load", None) or {})


def lm_and_aux_loss(out, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy of ``out.logits`` against already-shifted ``labels``, and the model's router
    aux loss if it has one."""
    logits = out.logits
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                     ignore_index=-100)
    return ce, getattr(out, "aux_loss", None)


def _takes_router_stats(model: nn.Module) -> bool:
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    return _forward_takes_router_stats(type(inner))


@functools.lru_cache(maxsize=None)
def _forward_takes_router_stats(model_class: type) -> bool:
    """Looked up once per model class: this runs for every micro-batch."""
    try:
        return "output_router_stats" in inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class StepStats:
    """What one optimizer step reports: means over micro-batches (and ranks), the gradient norm
    before clipping, a stop reason if any rank got a signal, and this rank's router load."""

    loss: float
    ce: float
    aux: float
    grad_norm: float
    stop: str | None = None
    load: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.loss, self.ce, self.aux, self.grad_norm))


class StepFn(Protocol):
    def __call__(self, batches: Iterator) -> StepStats: ...


class EagerStep:
    """Forward and backward over ``grad_accum`` micro-batches, clip, AdamW (skipped when the step is
    not finite: the trainer then stops with the last good checkpoint)."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, optimizer, micro_loss: Callable, *, grad_accum: int,
                 grad_clip: float, info: distributed.DistInfo, device: torch.device, stop_reason: Callable):
        self.model, self.raw_model, self.optimizer, self.micro_loss = model, raw_model, optimizer, micro_loss
        self.grad_accum, self.grad_clip, self.info, self.device = grad_accum, grad_clip, info, device
        self.stop_reason = stop_reason

    def __call__(self, batches: Iterator) -> StepStats:
        sums = torch.zeros(3, device=self.device, dtype=torch.float32)
        load: dict[str, torch.Tensor] = {}
        for micro in range(self.grad_accum):
            input_ids, labels = next(batches)
            input_ids = torch.as_tensor(input_ids).to(self.device, non_blocking=True)
            labels = torch.as_tensor(labels).to(self.device, non_blocking=True)
            last = micro == self.grad_accum - 1
            with distributed.no_grad_sync(self.model, self.info, skip=not last):
                parts = self.micro_loss(input_ids, labels)
                (parts.loss / self.grad_accum).backward()
            sums = add_micro_batch(sums, load, *parts)
        loss, ce, aux, stop = self._reduce(sums)
        grad_norm = self._clip()
        stats = StepStats(loss, ce, aux, grad_norm, stop, load)
        if stats.finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def _reduce(self, sums: torch.Tensor) -> tuple[float, float, float, str | None]:
        """Means over micro-batches and ranks, and whether any rank was asked to stop."""
        reason = self.stop_reason()
        packed = torch.cat([sums / self.grad_accum, sums.new_tensor([1.0 if reason else 0.0])])
        if self.info.enabled:
            packed = self.info.all_reduce_sum(packed)
            packed[:3] /= self.info.world_size
        loss, ce, aux, flag = packed.tolist()
        return loss, ce, aux, (reason or "stop requested on another rank") if flag > 0 else None

    def _clip(self) -> float:
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        return float(norm)


class GraphStep:
    """The same step replayed from a CUDA graph after two eager warm-up steps (one CUDA process;
    a non-finite step is skipped inside the graph)."""

    def __init__(self, raw_model: nn.Module, optimizer, micro_loss: Callable, *, grad_accum: int, grad_clip: float,
                 stop_reason: Callable):
        self.captured = CapturedTrainStep(raw_model, optimizer, micro_loss, grad_clip=grad_clip)
        self.grad_accum, self.stop_reason = grad_accum, stop_reason

    def __call__(self, batches: Iterator) -> StepStats:
        micro = [next(batches) for _ in range(self.grad_accum)]
        input_ids = torch.as_tensor(np.stack([m[0] for m in micro]))
        labels = torch.as_tensor(np.stack([m[1] for m in micro]))
        stats, load = self.captured(input_ids, labels)
        loss, ce, aux, grad_norm = stats.tolist()
        return StepStats(loss, ce, aux, grad_norm, self.stop_reason(), load)
