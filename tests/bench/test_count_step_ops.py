"""benchmarks/count_step_ops.py: the offline launch census attributes ops to the lines that issue
them, forward and backward."""

from __future__ import annotations

import importlib

import torch

BENCHMARK = "count_step_ops"


def test_census_attributes_every_norm_and_router_line(bench):
    census, n_layers = bench.count("base", batch=1, seq=16)
    forward = {site: n for (phase, site), n in census.by_site.items() if phase == "forward"}
    backward = {site: n for (phase, site), n in census.by_site.items() if phase == "backward"}
    # Every RMSNorm call (two per block, one final) issues the same ops: a multiple of their number.
    norm_ops = sum(n for site, n in forward.items() if site.startswith("layers/norm.py") and site.endswith(" rms_norm"))
    assert norm_ops > 0 and norm_ops % (2 * n_layers + 1) == 0
    # The backward knows which forward line each node came from (the router losses' included).
    assert any("layers/router.py" in site for site in backward)
    assert not any(site.startswith("triton kernel") for site in forward)  # no interpreter here
    assert sum(forward.values()) > 0 and sum(backward.values()) > 0


def test_the_census_leaves_the_expert_matmul_choice_as_it_was(bench):
    # It forces the grouped GEMM for its step; later code in the process must not inherit that.
    module = importlib.import_module("mossnet.ops.moe.grouped_linear")
    before = module._grouped_mm_usable
    bench.count("base", batch=1, seq=4)
    assert module._grouped_mm_usable is before
    x, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    module.grouped_linear(x, w, torch.tensor([3, 6], dtype=torch.int32))  # the CPU choice again, fp64 included


def test_main_prints_the_tables(bench, capsys):
    bench.main(["--model", "base", "--batch", "1", "--seq", "8", "--top", "5"])
    out = capsys.readouterr().out
    assert "forward:" in out and "backward:" in out and "-- top 5 lines (12 layers" in out
