"""Where the Triton kernel tests run: on CUDA, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1``); without either (CPU CI, no Triton) they are skipped. Shared by the
fused-kernel tests: ``from kernel_device import DEVICE, needs_kernels``."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
DEVICE = ("cuda" if torch.cuda.is_available() and not INTERPRET else "cpu" if INTERPRET else None) if HAVE_TRITON \
    else None
needs_kernels = pytest.mark.skipif(DEVICE is None, reason="needs Triton and CUDA, or TRITON_INTERPRET=1")
