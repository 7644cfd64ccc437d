"""MoSSE scan: a reference loop (``naive``), a chunked SSD form (``chunked``) and the
dispatcher (``interface``) that also hosts GPU fast paths."""

from .interface import mosse_scan, mosse_step, register_fast_path, resolve_impl

__all__ = ["mosse_scan", "mosse_step", "register_fast_path", "resolve_impl"]

try:  # GPU fast path (Triton); CPU installs without Triton keep the PyTorch paths
    from . import triton_scan as _triton_scan  # noqa: F401
except ImportError:
    pass
