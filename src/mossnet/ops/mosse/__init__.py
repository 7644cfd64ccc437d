"""MoSSE scan: a reference loop (``naive``), a chunked SSD form (``chunked``) and the
dispatcher (``interface``) that also hosts GPU fast paths (``triton``)."""

from .interface import mosse_scan, mosse_step, register_fast_path, resolve_impl

__all__ = ["mosse_scan", "mosse_step", "register_fast_path", "resolve_impl"]

try:  # GPU fast path (Triton); CPU installs without Triton keep the PyTorch paths
    from .triton import function as _triton_function
except ImportError:
    pass
else:
    register_fast_path("triton", _triton_function.mosse_scan_triton, _triton_function.why_unavailable)
