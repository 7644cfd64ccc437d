"""The CPU inference benchmark (benchmarks/cpu_inference.py, ``mossnet bench``) runs end to end
at tiny sizes and reports what it promises."""

from __future__ import annotations

import json
import os

import pytest

from mossnet.bench.report import markdown_table
from mossnet.cli import bench

KEYS = {"model", "context", "prefill_ms", "decode_ms_median", "decode_ms_p90", "peak_rss_mb", "decode_tokens",
        "loadavg_start", "threads"}


def test_tiny_benchmark_in_process(tmp_path):
    out = tmp_path / "bench.json"
    rc = bench.main(["--tiny", "--in-process", "--models", "mossnet,smollm2,smollm2-static,mamba2",
                     "--contexts", "16,32", "--decode-tokens", "3", "--json", str(out), "--markdown"])
    assert rc == 0
    data = json.loads(out.read_text())
    rows = data["results"]
    assert [(r["model"], r["context"]) for r in rows] == [
        (m, c) for m in ("mossnet", "smollm2", "smollm2-static", "mamba2") for c in (16, 32)
    ]
    for r in rows:
        assert KEYS <= set(r), r
        assert r["prefill_ms"] > 0 and r["decode_ms_p90"] >= r["decode_ms_median"] > 0 and r["peak_rss_mb"] > 0
        assert r["decode_tokens"] == 3
    assert {"date", "cpu", "threads", "torch", "command"} <= set(data["machine"])
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1


@pytest.mark.slow
def test_subprocess_per_model_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    rc = bench.main(["--tiny", "--models", "mossnet", "--contexts", "16,32", "--decode-tokens", "2",
                     "--plot", str(png), "--json", str(tmp_path / "b.json")])
    assert rc == 0
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["context"] for r in rows] == [16, 32] and all(r["peak_reset"] for r in rows)
    assert png.exists() and os.path.getsize(png) > 1000


def test_bench_cli_is_registered():
    from mossnet.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--device", "cpu", "--tiny", "--contexts", "16"])
    assert args.tiny and args.contexts == "16"
