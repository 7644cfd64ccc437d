"""Which autocast a run uses: bf16 on CUDA (``dtype="auto"``, where the card supports it) or
whenever ``dtype="bf16"``; fp32 otherwise. One rule for the trainer and the studies' own loops.

Example::

    autocast = autocast_factory(torch.device("cuda"), "auto")
    with autocast():
        logits = model(input_ids).logits
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

from .cuda_graph_step import autocast_for_capture


def uses_bf16(device: torch.device, dtype: str = "auto") -> bool:
    return dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def autocast_factory(device: torch.device, dtype: str = "auto", capture: bool = False) -> Callable[[], ContextManager]:
    """A zero-argument factory of the run's autocast context. ``capture``: the form a step
    captured in a CUDA graph needs (no cast cache, ``cuda_graph_step.autocast_for_capture``)."""
    if not uses_bf16(device, dtype):
        return contextlib.nullcontext
    if capture:
        return lambda: autocast_for_capture(device.type, torch.bfloat16)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
