"""The training step that ``mossnet train`` runs, on one fixed batch, for benchmarks.

Training benchmarks time the trainer's own step rather than a loop of their own: the loss hook
(``lm_loss``: cross-entropy plus the router losses), backward, gradient clipping and AdamW,
either eager (``EagerStep``) or replayed from a CUDA graph (``GraphStep``, what
``--cuda-graph`` runs), under the run's autocast rule (bf16 on CUDA, fp32 on the CPU). The batch
is host memory, as the trainer's data is, so each step includes its copy to the device.

Example:
    >>> import numpy as np, torch
    >>> from mossnet import MossNetConfig, MossNetForCausalLM
    >>> model = MossNetForCausalLM(MossNetConfig.from_preset("tiny", n_layers=1))
    >>> ids = np.zeros((2, 8), dtype=np.int64)
    >>> step = trainer_step(model, ids, ids, graphed=False)
    >>> stats = step()
    >>> stats.finite
    True
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import torch
from torch import nn

from mossnet.train.distributed import DistInfo
from mossnet.train.optim import build_optimizer
from mossnet.runtime import autocast_factory
from mossnet.train.step import EagerStep, GraphStep, StepStats, lm_loss


def trainer_step(model: nn.Module, input_ids: np.ndarray, labels: np.ndarray, *, graphed: bool, lr: float = 1e-4,
                 weight_decay: float = 0.1, grad_clip: float = 1.0) -> Callable[[], StepStats]:
    """A zero-argument callable: one optimizer step of ``model`` (already on its device) on the
    micro-batch ``input_ids`` / ``labels`` ((B, T) integer arrays; ``labels`` already shifted,
    as the trainer's are). ``graphed``: the CUDA-graph step (CUDA only; its first two calls are
    eager warm-up steps and the third captures). Every call is a real step that updates the
    weights; its ``StepStats`` is returned."""
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, lr, weight_decay)
    autocast = autocast_factory(device, "auto", capture=graphed)

    def micro_loss(ids: torch.Tensor, targets: torch.Tensor):
        with autocast():
            return lm_loss(model, ids, targets)

    no_stop = lambda: None  # noqa: E731  (a benchmark has no signals to honour)
    if graphed:
        step = GraphStep(model, optimizer, micro_loss, grad_accum=1, grad_clip=grad_clip, stop_reason=no_stop)
    else:
        step = EagerStep(model, model, optimizer, micro_loss, grad_accum=1, grad_clip=grad_clip, info=DistInfo(),
                         device=device, stop_reason=no_stop)
    batches = itertools.repeat((input_ids, labels))
    return lambda: step(batches)
