"""Small helpers shared by the studies: thread and job counts (device and autocast: ``mossnet.runtime``)."""

from __future__ import annotations


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
