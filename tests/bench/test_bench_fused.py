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


def test_the_measurements_run_on_a_tiny_model(bench, monkeypatch):
    """The eager training and eager decode measurements, on the CPU with a tiny model (the
    captured kinds need CUDA): the JSON rows the GPU run will write, with both policies."""
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setitem(bench.MODELS, "tiny", dict(preset="tiny"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    row = bench.measure("tiny", batch=2, seq=16, steps=1, repeats=1, kinds=("eager",))
    assert set(row) >= {"eager/reference", "eager/auto", "eager/speedup"}
    assert row["eager/auto"]["policy"]["fused_ops"] == "auto"
    assert row["eager/reference"]["policy"]["fused_ops"] == "reference"
    decode = bench.measure_decode("tiny", prompt_len=8, steps=2, repeats=1, graphs=(False,))
    assert decode["decode_eager/auto"]["ms_per_step"] > 0 and decode["decode_eager/reference"]["ms_per_step"] > 0
    prefill = bench.measure_prefill("tiny", prompt_len=8, repeats=1)
    assert prefill["prefill/auto"]["ms"] > 0 and prefill["prefill/reference"]["ms"] > 0
