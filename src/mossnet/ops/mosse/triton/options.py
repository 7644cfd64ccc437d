"""The execution choices the Triton scan takes, and the one function that reads their defaults.

This module imports neither Triton nor the kernels, so a CPU install can build and print the
choices. :func:`~.function.mosse_scan_triton` takes a :class:`TritonScanOptions` as its
``options`` argument; when it is None (the dispatcher's call), :func:`options_from_env` supplies
it. That function is the only place in the Triton package that reads the environment: a caller
that decides execution elsewhere passes ``options`` explicitly, or replaces this function.

Example:
    >>> TritonScanOptions()
    TritonScanOptions(specialize=False, autotune=True, lowp=True, state_bf16=False)
    >>> options_from_env({"MOSSNET_TRITON_AUTOTUNE": "0", "MOSSNET_TRITON_LOWP": "0"})
    TritonScanOptions(specialize=False, autotune=False, lowp=False, state_bf16=False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class TritonScanOptions:
    """How the Triton kernels run; none of these changes the math, only speed and rounding.

    Attributes:
        specialize: let Triton specialise the kernels on the divisibility of the sizes that vary
            per call (T, chunks per sequence, experts). Off: one compiled kernel serves every T.
        autotune: time each kernel's (at most four) configurations once per (N, P, chunk, dtypes)
            and keep the fastest for the process. Off: the first configuration, no timing.
            The CPU interpreter never tunes (it has no device timer).
        lowp: for fp16/bf16 inputs, multiply in the input dtype (fp32 accumulation) where the
            output, dx and gradient kernels take products of two inputs or round their fp32
            scores and states for the tensor cores, as mamba_ssm and fla do. Off: every product
            in tf32. fp32 inputs ignore it. The CPU interpreter keeps bf16 products in fp32 (it
            cannot multiply bf16 tiles).
        state_bf16: store the chunk states h_c and their gradients dh_c in bf16 between the
            passes (each pass still accumulates in fp32 registers); the final state and dh0
            stay fp32. Off by default: the spec keeps the state in fp32.
    """

    specialize: bool = False
    autotune: bool = True
    lowp: bool = True
    state_bf16: bool = False


def options_from_env(environ: Mapping[str, str] | None = None) -> TritonScanOptions:
    """The defaults, from ``MOSSNET_TRITON_SPECIALIZE`` (``1`` turns it on), ``MOSSNET_TRITON_AUTOTUNE``
    and ``MOSSNET_TRITON_LOWP`` (``0`` turns them off); ``environ`` defaults to ``os.environ``.
    Read at every call that is given no options, so a change to the environment takes effect at
    the next call."""
    from mossnet.execution import ExecutionPolicy  # the one reader of the environment

    policy = ExecutionPolicy.build(env=os.environ if environ is None else environ)
    return TritonScanOptions(**policy.triton_options())
