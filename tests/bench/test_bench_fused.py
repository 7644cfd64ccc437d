"""``benchmarks/bench_fused.py``: its models are the layout gate's, and without CUDA it stops with
one line (the timing itself runs on the GPU, from ``scripts/gpu_check.sh``'s ``fused`` section)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fused.py"

BENCHMARK = "bench_fused"


def test_models_and_policies(bench):
    assert set(bench.MODELS) == {"base", "converted"}
    assert bench.POLICIES == ("reference", "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_stops_with_one_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--models", "base"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "bench_fused.py: needs a CUDA device (the fused kernels are GPU kernels)"
