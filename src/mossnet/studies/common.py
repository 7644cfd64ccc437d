"""Small helpers shared by the studies: device, autocast, thread count."""

from __future__ import annotations

import contextlib


def resolve_device(name: str = "auto"):
    import torch

    if name in ("", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device, dtype: str = "auto", capture: bool = False):
    """bf16 autocast on CUDA (``auto``) or when asked; fp32 otherwise. ``capture``: the form a
    CUDA-graph-captured step needs (no cast cache)."""
    import torch

    bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if bf16 and capture:
        from mossnet.train.cuda_graph_step import autocast_for_capture

        return lambda: autocast_for_capture(device.type, torch.bfloat16)
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def set_threads(threads: int) -> None:
    import torch

    if threads and threads > 0:
        torch.set_num_threads(int(threads))


def default_jobs(device_name: str = "auto") -> int:
    """Parallel runs: 1 on a GPU; on a CPU one run per core (each with one thread), because the
    small models of a CPU study gain little from a second thread and a lot from a second run."""
    import os

    import torch

    if device_name not in ("cpu",) and torch.cuda.is_available():
        return 1
    return max(1, (os.cpu_count() or 1))
