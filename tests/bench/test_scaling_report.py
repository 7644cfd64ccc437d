"""``mossnet.bench.scaling``: the flat-in-length check, the table and the plot, on results whose
verdicts are known by hand."""

from __future__ import annotations

import sys

import pytest

from mossnet.bench import scaling
from mossnet.errors import MissingExtraError


def row(model, seq_len, us, size="base", path="eager", status="ok", **extra):
    r = {"model": model, "size": size, "seq_len": seq_len, "path": path, "status": status, "batch": 32768 // seq_len,
         "params_total": {"small": 70e6, "base": 130e6, "large": 1.06e9}[size], "mfu": 0.05, "peak_mem_gb": 10.0}
    if status == "ok":
        r["tokens_per_s"] = 1e6 / us
    return {**r, **extra}


def results(rows, lengths=(2048, 8192, 32768)):
    env = {"card": "NVIDIA H100 80GB HBM3", "date": "2026-12-06", "commit": "abc1234", "tokens_per_step": 32768}
    return {"env": env,
            "sweeps": {"length": {"size": "base", "lengths": list(lengths)},
                       "size": {"seq_len": 2048, "sizes": ["small", "base", "large"]}},
            "rows": rows}


def test_flat_within_tolerance():
    # 10 -> 11.4 us/token is +14%: flat; Llama's 10 -> 20 grows 100%: not flat, reported only.
    res = results([row("mossnet", 2048, 10.0), row("mossnet", 8192, 10.5), row("mossnet", 32768, 11.4),
                   row("llama", 2048, 10.0), row("llama", 8192, 13.0), row("llama", 32768, 20.0)])
    checks = {c["model"]: c for c in scaling.flat_check(res)}
    assert checks["mossnet"]["verdict"] == "flat" and checks["mossnet"]["target"] == "flat"
    assert checks["mossnet"]["spread"] == pytest.approx(0.14)
    assert checks["mossnet"]["us_per_token"] == pytest.approx([10.0, 10.5, 11.4])
    assert checks["llama"]["verdict"] == "not flat" and checks["llama"]["target"] == "report"
    assert checks["llama"]["growth"] == pytest.approx(2.0)


def test_spread_uses_the_extremes_not_the_ends():
    """A dip in the middle counts: 10, 8, 10 is a 25% spread although the ends agree."""
    check = scaling.flatness([row("mossnet", 2048, 10.0), row("mossnet", 8192, 8.0), row("mossnet", 32768, 10.0)])
    assert check["verdict"] == "not flat" and check["spread"] == pytest.approx(0.25) and check["growth"] == 1.0
    assert scaling.flatness([row("mossnet", 2048, 10.0), row("mossnet", 8192, 8.0)], tolerance=0.3)["verdict"] == "flat"


def test_a_length_that_did_not_run_is_incomplete_never_flat():
    res = results([row("mossnet", 2048, 10.0), row("mossnet", 8192, 10.0, status="oom", error="CUDA out of memory"),
                   row("ssm-1head", 2048, 10.0), row("ssm-1head", 8192, 10.0)])  # no 32768 row at all
    checks = {c["model"]: c for c in scaling.flat_check(res)}
    assert checks["mossnet"]["verdict"] == "incomplete (8192: oom, 32768: missing)"
    assert checks["ssm-1head"]["verdict"] == "incomplete (32768: missing)"
    assert checks["mossnet"]["spread"] is None and checks["mossnet"]["us_per_token"] == [10.0, None, None]


def test_paths_and_sizes_are_kept_apart():
    res = results([row("mossnet", T, 10.0) for T in (2048, 8192, 32768)]
                  + [row("mossnet", T, us, path="graph") for T, us in ((2048, 5.0), (8192, 5.0), (32768, 9.0))]
                  + [row("mossnet", 2048, 99.0, size="large")])  # the size sweep's row: not in the length check
    checks = {c["path"]: c for c in scaling.flat_check(res)}
    assert checks["eager"]["verdict"] == "flat" and checks["graph"]["verdict"] == "not flat"
    assert [r["size"] for r in scaling.size_series(res, "mossnet", "eager")] == ["base", "large"]


def test_table_shows_every_row_and_verdict():
    launches = {"device": "cuda", "device_kernels": 15000.0, "host_launches": 14990.0, "graph_launches": 0.0}
    res = results([row("mossnet", 2048, 10.0, launches=launches), row("mossnet", 8192, 10.0),
                   row("mossnet", 32768, 10.0), row("llama", 2048, 10.0, size="large", status="oom",
                                                    error="CUDA out of memory. Tried to allocate 4 GiB")])
    table = scaling.markdown_table(res)
    assert "card: NVIDIA H100 80GB HBM3; date 2026-12-06; commit abc1234; 32,768 tokens per step" in table
    assert "| mossnet | base | 2048 | 16 | eager | 100,000 | 10.000 | 10.00 | 5.0% | 15,000 | 14,990 |" in table
    assert "| mossnet | base | 8192 | 4 | eager | 100,000 | 10.000 | 10.00 | 5.0% | - | - |" in table
    assert "| llama | large | 2048 | 16 | eager | oom: CUDA out of memory. Tried to allocate 4 GiB |" in table
    assert "| mossnet-base | eager | 2048: 10.000, 8192: 10.000, 32768: 10.000 | 0.0% | flat |" in table


def test_launch_cells_per_device():
    cuda = {"device": "cuda", "device_kernels": 15210.0, "host_launches": 40.0, "graph_launches": 1.0, "cpu_ops": 900.0}
    assert scaling.launch_cells(cuda) == ("15,210", "41")
    assert scaling.launch_cells({"device": "cpu", "cpu_ops": 2033.0}) == ("2,033 CPU ops", "-")
    assert scaling.launch_cells(None) == ("-", "-")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    res = results([row(m, T, us) for m in ("mossnet", "llama") for T, us in ((2048, 10.0), (8192, 11.0), (32768, 12.0))]
                  + [row("mossnet", 2048, us, size=s) for s, us in (("small", 6.0), ("large", 40.0))])
    path = tmp_path / "cost.png"
    scaling.plot_scaling(res, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"mossnet\[plot\]"):
        scaling.plot_scaling(results([]), tmp_path / "x.png")
