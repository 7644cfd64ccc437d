"""The Triton MoSSE scan as an autograd function: the entry registered as ``impl="triton"``.

Forward: :func:`.state.fwd_h` (chunk states) then :func:`.output.fwd_o` (outputs). Backward:
``fwd_h`` again (recomputing the states costs one cheap pass; keeping them would cost twice the
activation memory of x, and fla makes the same choice), :func:`.state.bwd_dh`,
:func:`.output.bwd_dx`, :func:`.grads.bwd_dqk`.

What the kernels are told (precision, operand dtype, tuning, specialisation) is resolved once per
call by :func:`kernel_choices`, from :class:`.options.TritonScanOptions` and from what the backend
can do. Whether the path can run at all is :func:`why_unavailable`'s answer alone.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl

from ...function_call import apply_function
from ..interface import mosse_scan
from .geometry import Geometry
from .grads import bwd_dqk, bwd_dqk_kernel
from .options import TritonScanOptions, options_from_env
from .output import bwd_dx, bwd_dx_kernel, fwd_o, fwd_o_kernel
from .state import bwd_dh, bwd_dh_kernel, fwd_h, fwd_h_kernel
from .tuning import KernelChoices

DEFAULT_CHUNK = 64
MAX_STATE_DIM = 256  # N above this would not fit one register tile: such calls run the chunked scan

# Every kernel of the scan, by the name its tuning log and tests use.
STAGE_KERNELS = {k.name: k for k in (fwd_h_kernel, fwd_o_kernel, bwd_dh_kernel, bwd_dx_kernel, bwd_dqk_kernel)}


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_choices(options: TritonScanOptions, dtype: torch.dtype) -> KernelChoices:
    """What the kernels are told for inputs of ``dtype``.

    fp32 inputs use IEEE fp32 dot products (Triton would use tf32 by default); half inputs use
    tf32 for the fp32 operands. The interpreter cannot time configs (no device timer) and
    multiplies bf16 tiles as raw integers, so under it tuning is off and bf16 operands are
    upcast, whatever ``options`` say.

    >>> kernel_choices(TritonScanOptions(), torch.float32).prec
    'ieee'
    >>> kernel_choices(TritonScanOptions(lowp=False), torch.float16).half_operands
    False
    """
    half = dtype in (torch.float16, torch.bfloat16) and options.lowp
    return KernelChoices(
        dtype=dtype,
        prec="ieee" if dtype == torch.float32 else "tf32",
        half_operands=half and (dtype == torch.float16 or not interpreting()),
        autotune=options.autotune and not interpreting(),
        specialize=options.specialize,
        state_dtype=torch.bfloat16 if options.state_bf16 else torch.float32,
    )


@triton.jit
def _dynamic_loop_probe_kernel(bound_ptr, out_ptr):
    acc = tl.zeros([1], dtype=tl.int32)
    for _ in range(0, tl.load(bound_ptr)):
        acc += 1
    tl.store(out_ptr + tl.arange(0, 1), acc)


@functools.cache
def _interpreter_fault() -> str | None:
    """None when Triton's CPU interpreter runs a loop whose bound is loaded at run time (the
    state passes need it); else what went wrong. Some Triton releases' interpreters fail this
    with NumPy >= 2.4. Run once per process."""
    bound = torch.full((1,), 3, dtype=torch.int32)
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _dynamic_loop_probe_kernel[(1,)](bound, out)
    except Exception as e:  # noqa: BLE001  (any failure means the kernels cannot run here)
        return f"{type(e).__name__}: {e}"
    return None if int(out) == 3 else f"a 3-step loop ran {int(out)} times"


def why_unavailable(x: torch.Tensor) -> str | None:
    """None when the Triton path can run on tensors like ``x``; else the reason."""
    if x.device.type != "cuda":
        if not (interpreting() and x.device.type == "cpu"):
            return f"tensors are on {x.device.type}, not CUDA (set TRITON_INTERPRET=1 to run the kernels on CPU)"
        fault = _interpreter_fault()
        if fault is not None:
            return (f"Triton {triton.__version__}'s CPU interpreter cannot run the scan's loops "
                    f"({fault}); a NumPy older than 2.4 or another Triton release may")
        return None
    if x.dtype == torch.float64:
        return "float64 inputs are not supported by the Triton kernels"
    return None


class MosseScanTriton(torch.autograd.Function):
    """y, final_state = scan(x, dt, A, B, C, D, initial_state); see :func:`mosse_scan_triton`."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, cu_seqlens, output_final_state, chunk_size, choices):
        x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
        D = D.contiguous() if D is not None else None
        h0 = initial_state.contiguous() if initial_state is not None else None
        geo = Geometry(x.shape[0], x.shape[1], cu_seqlens, chunk_size, x.device)
        h, hT = fwd_h(x, dt, A, B, h0, geo, choices, output_final_state)
        y = fwd_o(x, dt, A, B, C, D, h, geo, choices)
        del h
        ctx.save_for_backward(x, dt, A, B, C, D, h0)
        ctx.geo = geo
        ctx.choices = choices
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        x, dt, A, B, C, D, h0 = ctx.saved_tensors
        geo, choices = ctx.geo, ctx.choices
        dy = dy.contiguous()
        h, _ = fwd_h(x, dt, A, B, h0, geo, choices, False)
        dh, dh0 = bwd_dh(dy, dt, A, C, dhT, h0 is not None, geo, choices)
        dx = bwd_dx(x, dt, A, B, C, D, dh, dy, geo, choices)
        ddt, dA, dB, dC, dD = bwd_dqk(x, dt, A, B, C, D, h, dh, dy, geo, choices)
        dh0 = dh0.to(h0.dtype) if dh0 is not None else None
        return dx, ddt, dA, dB, dC, dD, dh0, None, None, None, None


def _run_chunked_instead(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, chunk_size):
    warnings.warn(
        f"mossnet: Triton MoSSE scan does not handle N={B.shape[-1]} / {x.dtype}; using the 'chunked' scan",
        RuntimeWarning, stacklevel=3,
    )
    return mosse_scan(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens,
                      impl="chunked", chunk_size=chunk_size)


def _empty_scan(x, B, initial_state, output_final_state, n_states):
    """No tokens: y is empty and each state passes through unchanged."""
    y = x.new_zeros(x.shape) + 0 * x
    if not output_final_state:
        return y, None
    if initial_state is None:
        E, P, N = x.shape[2], x.shape[3], B.shape[-1]
        return y, torch.zeros(n_states, E, N, P, dtype=torch.float32, device=x.device)
    return y, initial_state.float() * 1.0


def mosse_scan_triton(
    x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, cu_seqlens=None,
    chunk_size: int = DEFAULT_CHUNK, options: TritonScanOptions | None = None,
):
    """The MoSSE scan through the Triton kernels; contract of :func:`mossnet.ops.mosse_scan`.

    Inputs are assumed validated by the dispatcher (shapes, devices). ``cu_seqlens`` values are
    not read back to the host (no synchronisation); they must start at 0, be non-decreasing and
    end at the packed length, as the dispatcher documents. ``options`` None means
    :func:`.options.options_from_env`. N above ``MAX_STATE_DIM`` and float64 inputs run the
    chunked scan instead, with a warning.
    """
    batch, T = x.shape[:2]
    if B.shape[-1] > MAX_STATE_DIM or x.dtype == torch.float64:
        return _run_chunked_instead(x, dt, A, B, C, D, initial_state, output_final_state, cu_seqlens, chunk_size)
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"mosse_scan_triton: chunk_size must be a power of two >= 16, got {chunk_size}")
    if batch * T == 0:
        n_states = batch if cu_seqlens is None else cu_seqlens.numel() - 1
        return _empty_scan(x, B, initial_state, output_final_state, n_states)
    choices = kernel_choices(options if options is not None else options_from_env(), x.dtype)
    return apply_function(MosseScanTriton, x, dt, A, B, C, D, initial_state, cu_seqlens, output_final_state,
                          chunk_size, choices)
