"""Where the fused Triton kernels around the scan may run, for every such op: one rule, the
policy's ``fused_ops`` ("auto", "reference", "triton"; :class:`mossnet.execution.ExecutionPolicy`).

Each fused op keeps its PyTorch reference beside it and asks :func:`choose` which to run:
"auto" takes the kernel where it can run and the reference elsewhere (the reason logged once at
INFO, on CUDA only, so a CPU run stays quiet); "triton" where it cannot run is an error.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from mossnet.errors import ConfigError
from mossnet.execution import FUSED_OPS, tracing

log = logging.getLogger(__name__)
TRACING = "inside torch.compile or torch.export (the reference is traced instead)"


@functools.cache
def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


def why_triton_cannot_run(t: torch.Tensor) -> str | None:
    """None when a Triton kernel can run on tensors like ``t``; else the reason. Tracing is
    asked first, so that a trace never reaches the cached import check."""
    if tracing():
        return TRACING
    missing = _triton_missing()
    if missing is not None:
        return missing
    if t.device.type == "cuda":  # first: every layer asks this about a dozen times per call
        return None
    from mossnet.ops.mosse.triton.function import _interpreter_fault, interpreting

    if not (interpreting() and t.device.type == "cpu"):
        return f"tensors are on {t.device.type}, not CUDA"
    fault = _interpreter_fault()  # loops with run-time bounds, which some kernels have
    return None if fault is None else f"Triton's CPU interpreter cannot run the kernels here ({fault})"


@functools.cache
def _say_once(op: str, reason: str) -> None:
    log.info("mossnet: %s runs its PyTorch reference: %s", op, reason)


def choose(op: str, impl: str, why_not: Callable[[], str | None], on_cuda: bool) -> bool:
    """True: run the fused kernel of ``op``; False: its reference. ``why_not()`` says why the
    kernel cannot run here (None: it can); it is not asked under "reference" (every router, layer
    and decode step asks this, so the policy that never fuses pays nothing for the question)."""
    if impl not in FUSED_OPS:
        raise ConfigError(f"fused_ops must be one of {FUSED_OPS}, got {impl!r}")
    if impl == "reference":
        return False
    reason = why_not()
    if reason is None:
        return True
    if impl == "triton":
        raise ConfigError(f"fused_ops='triton': {op} cannot run here: {reason}")
    if on_cuda and reason != TRACING:  # a trace runs the reference by design: nothing to say
        _say_once(op, reason)
    return False
