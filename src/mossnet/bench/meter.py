"""What a measurement waits for and what memory it reads, per device: on the CPU the resident
memory of this process (VmRSS, VmHWM); on CUDA the bytes PyTorch's allocator holds for tensors
(``memory_allocated``, ``max_memory_allocated``), after waiting for the device to finish."""

from __future__ import annotations

from mossnet.bench.memory import peak_rss_mb, reset_peak_rss, rss_mb


class CpuMeter:
    """Resident memory (it includes the weights and the Python / torch baseline)."""

    device_type = "cpu"
    before_key, peak_key = "rss_before_mb", "peak_rss_mb"

    def sync(self) -> None:
        """CPU work is done when the call returns."""

    def current_mb(self) -> float:
        return rss_mb()

    def reset_peak(self) -> bool:
        return reset_peak_rss()

    def peak_mb(self) -> float:
        return peak_rss_mb()

    def info(self) -> dict:
        return {"device": "cpu"}


class CudaMeter:
    """Allocated tensor memory on one CUDA device (weights, caches, activations, and the
    memory pool of a captured decode graph); the caching allocator's reserve is not counted."""

    device_type = "cuda"
    before_key, peak_key = "alloc_before_mb", "peak_alloc_mb"

    def __init__(self, device):
        self.device = device

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize(self.device)

    def current_mb(self) -> float:
        import torch

        return torch.cuda.memory_allocated(self.device) / 2**20

    def reset_peak(self) -> bool:
        import torch

        torch.cuda.reset_peak_memory_stats(self.device)
        return True

    def peak_mb(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def info(self) -> dict:
        import torch

        return {"device": "cuda", "gpu": torch.cuda.get_device_name(self.device), "cuda": torch.version.cuda}


def meter_for(device) -> CpuMeter | CudaMeter:
    """The meter of a ``torch.device``."""
    return CudaMeter(device) if device.type == "cuda" else CpuMeter()
