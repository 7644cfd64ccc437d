"""``benchmarks/host_work_cpu.py``: the CUDA code path runs on the CPU with its kernel launches
stubbed, and the A/B reports both checkouts. Needs Triton (its interpreter); skipped without."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "host_work_cpu.py"


@pytest.mark.parametrize("mode, launches_per_layer", [("prefill", 19), ("train", 36)])
def test_counts_launches_and_ops_against_a_second_checkout(tmp_path, mode, launches_per_layer):
    out = tmp_path / "host.json"
    done = subprocess.run([sys.executable, "-W", "ignore", str(SCRIPT), "--mode", mode, "--tokens", "8",
                           "--iters", "1", "--rounds", "1", "--compare", str(ROOT / "src"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 and "ratio (this checkout / the other)" in done.stdout
    for row in rows:
        assert row["mode"] == mode and row["host_ms_min"] > 0
        # every layer launches its kernels (the MoSSE's and the MoE MLP's), at least this many
        assert row["launches"] >= launches_per_layer * row["layers"]
        assert row["aten_ops"] > row["layers"]


def test_a_missing_checkout_is_one_clear_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--compare", str(tmp_path / "nowhere"), "--rounds", "1",
                           "--iters", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "nowhere" in done.stderr.strip().splitlines()[-1]
