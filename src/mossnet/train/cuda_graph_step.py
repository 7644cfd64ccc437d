"""The whole training step (forward, backward, clipping, AdamW) captured once in a CUDA graph and
replayed for every later step.

Why: a base-preset MossNet step issues about 15,000 small kernels (the routed layer's gathers,
conv, scan, norm and their backward). On the VM hosts we measure on, each launch costs tens of
microseconds of CPU time, so the host, not the GPU, sets the pace: about 110 ms of GPU work in a
160 ms step (BENCHMARKS.md). Replaying a graph issues all of them in one call.

Why by hand: ``torch.compile(mode="reduce-overhead")`` would capture graphs for us, but compiling
the routed layer is checked on the CPU only (``tests/ops/test_segments.py``; not yet on a GPU), and
``torch.cuda.make_graphed_callables`` graphs forward and backward but not the optimizer step. What
is left is PyTorch's documented "whole-network capture" recipe (``mossnet/cuda_graph.py``): a few
eager steps on a side stream (lazy initialisation, Triton autotuning, optimizer state), one
capture, then replays. It needs a
step without host synchronisation and with fixed shapes; MossNet's training step is checked for
both (``tests/models/test_cuda_graph_decode.py``).

Two details make the captured step behave like the eager one:

* the learning rate lives in a 0-d device tensor per parameter group (``set_lr`` writes it), so the
  schedule still applies: a Python float would be frozen into the graph at capture;
* a step whose loss or gradient norm is not finite is **not applied**: the fused AdamW kernel
  skips its update when the ``found_inf`` flag is set (the hook ``torch.amp.GradScaler`` uses),
  and this flag is computed inside the graph. The caller sees the non-finite numbers and stops.

Example::

    step = CapturedTrainStep(model, optimizer, loss_fn, grad_clip=1.0)
    for input_ids, labels in batches:          # (grad_accum, batch, seq) each
        set_lr(optimizer, lr_now)              # works on the captured step too
        stats, load = step(input_ids, labels)  # stats: [loss, ce, aux, grad_norm] on the device
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..cuda_graph import capture, run_on_side_stream
from .metrics import add_micro_batch

# (micro-batch input_ids, labels) -> (loss, cross-entropy, aux loss or None, {router: (E,) load})
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]]


class CaptureError(RuntimeError):
    """The training step could not be captured in a CUDA graph."""


class CapturedTrainStep:
    """One optimizer step over ``grad_accum`` micro-batches, replayed from a CUDA graph.

    Args:
        model: the module being trained, on a CUDA device (train mode; its parameters are what
            ``optimizer`` updates).
        optimizer: ``torch.optim.AdamW`` over the model's parameters. It is switched to the fused,
            capturable implementation here (state moved to the device, tensor learning rates).
        loss_fn: ``loss_fn(input_ids, labels) -> (loss, ce, aux | None, router_load)`` for one
            micro-batch, autocast included; ``loss`` is what is differentiated.
        grad_clip: max global gradient norm (0 = no clipping; the norm is still reported).
        warmup_steps: eager steps (on a side stream) before the capture; they are real steps.

    Each call is exactly one real optimizer step: the first ``warmup_steps`` calls run eagerly, the
    next one captures the graph and replays it, later ones only replay.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                 grad_clip: float = 0.0, warmup_steps: int = 2):
        if not isinstance(optimizer, torch.optim.AdamW):
            raise CaptureError(f"a CUDA-graph training step supports torch.optim.AdamW, got {type(optimizer).__name__}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params or params[0].device.type != "cuda":
            raise CaptureError("a CUDA-graph training step needs the model on a CUDA device")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.params = params
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        self.warmup_steps = max(int(warmup_steps), 1)  # at least one: optimizer state must exist
        self.device = params[0].device
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_ids: torch.Tensor | None = None
        self.static_labels: torch.Tensor | None = None
        self.static_stats: torch.Tensor | None = None
        self.static_load: dict[str, torch.Tensor] = {}
        # 0-d: torch's fused AdamW subtracts it from each 0-d step counter
        self.found_inf = torch.zeros((), device=self.device, dtype=torch.float32)
        make_capturable(optimizer, self.found_inf)

    # ------------------------------------------------------------------ public
    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run one step. ``input_ids``, ``labels``: (grad_accum, batch, seq) integer tensors (any
        device; copied into the graph's static buffers). Returns ``stats`` = (4,) float32 on the
        device: mean loss, cross-entropy, aux loss over the micro-batches and the gradient norm
        before clipping; and the router load summed over micro-batches. Both are fresh tensors."""
        self._load_inputs(input_ids, labels)
        if self.calls < self.warmup_steps:
            stats, load = self._eager_on_side_stream()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            stats, load = self.static_stats, self.static_load
        self.calls += 1
        return stats.clone(), {k: v.clone() for k, v in load.items()}

    @property
    def captured(self) -> bool:
        return self.graph is not None

    # ------------------------------------------------------------------ internals
    def _load_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor) -> None:
        if input_ids.dim() != 3 or labels.shape != input_ids.shape:
            raise ValueError(f"input_ids and labels must both be (grad_accum, batch, seq), got "
                             f"{tuple(input_ids.shape)} and {tuple(labels.shape)}")
        if self.static_ids is None:
            self.static_ids = torch.empty(input_ids.shape, dtype=torch.long, device=self.device)
            self.static_labels = torch.empty(labels.shape, dtype=torch.long, device=self.device)
        elif input_ids.shape != self.static_ids.shape:
            raise ValueError(f"a CUDA-graph training step has fixed shapes: it was set up for "
                             f"{tuple(self.static_ids.shape)}, got {tuple(input_ids.shape)}")
        self.static_ids.copy_(input_ids, non_blocking=True)
        self.static_labels.copy_(labels, non_blocking=True)

    def _step(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The step itself, eager or under capture: no host synchronisation allowed here."""
        self.optimizer.zero_grad(set_to_none=True)  # grads are (re)allocated by the first backward
        n_micro = self.static_ids.shape[0]
        sums = torch.zeros(3, device=self.device, dtype=torch.float32)
        load: dict[str, torch.Tensor] = {}
        for micro in range(n_micro):
            loss, ce, aux, micro_load = self.loss_fn(self.static_ids[micro], self.static_labels[micro])
            (loss / n_micro).backward()
            sums = add_micro_batch(sums, load, loss, ce, aux, micro_load)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        stats = torch.cat([sums / n_micro, grad_norm.detach().float().reshape(1)])
        # Skip the update when anything is not finite (read by the fused AdamW kernel).
        self.found_inf.copy_((~torch.isfinite(stats)).any().float())
        self.optimizer.step()
        return stats, load

    def _eager_on_side_stream(self):
        with torch.cuda.device(self.device):
            return run_on_side_stream(self._step)

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.device(self.device):
                graph, (self.static_stats, self.static_load) = capture(self._step)
        except Exception as err:
            raise CaptureError(
                f"capturing the training step in a CUDA graph failed ({type(err).__name__}: {err}). The step "
                "must be free of host synchronisation and data-dependent shapes; train without the CUDA "
                "graph (--no-cuda-graph) to get the eager step.") from err
        self.graph = graph


def make_capturable(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Switch ``optimizer`` (AdamW) to its fused, capturable form in place: every group's
    learning rate becomes a 0-d float32 tensor on the parameters' device, per-parameter ``step``
    counters move there too (a checkpoint loaded from an eager run keeps them on the CPU), and the
    fused kernel reads ``found_inf`` to skip a non-finite step."""
    device = found_inf.device
    for group in optimizer.param_groups:
        group["capturable"] = True
        group["fused"] = True
        group["foreach"] = None
        lr = group["lr"]
        group["lr"] = torch.tensor(float(lr), device=device, dtype=torch.float32)
    for param, state in optimizer.state.items():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and (step.device != param.device or step.dtype != torch.float32):
            state["step"] = step.to(device=param.device, dtype=torch.float32)
    optimizer.found_inf = found_inf  # torch's fused Adam(W) reads optimizer.found_inf

