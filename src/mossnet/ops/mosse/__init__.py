"""MoSSE scan: a reference loop (``naive``), a chunked SSD form (``chunked``) and the
dispatcher (``interface``) that also hosts GPU fast paths (``triton``)."""

from .interface import mosse_scan, mosse_step, register_fast_path, resolve_impl

__all__ = ["mosse_scan", "mosse_step", "register_fast_path", "resolve_impl"]

try:  # GPU fast path (Triton); CPU installs without Triton keep the PyTorch paths
    from .triton import function as _triton_function
    from .triton.options import TritonScanOptions
except ImportError:
    pass
else:
    def _triton_scan(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, cu_seqlens=None, *,
                     lowp=None, autotune=None, specialize=None, state_bf16=False):
        """``impl="triton"`` with an execution policy's Triton options (``fast_path_options``);
        without them, the environment's defaults."""
        options = None
        if None not in (lowp, autotune, specialize):
            options = TritonScanOptions(specialize=specialize, autotune=autotune, lowp=lowp, state_bf16=state_bf16)
        return _triton_function.mosse_scan_triton(x, dt, A, B, C, D=D, initial_state=initial_state,
                                                  output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                                  options=options)

    register_fast_path("triton", _triton_scan, _triton_function.why_unavailable)
