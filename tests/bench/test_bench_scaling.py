"""CI smoke test of ``benchmarks/bench_scaling.py`` (cost against length and size) at tiny sizes
on the CPU: a complete JSON, the isolated child process, and the failures it must record
rather than crash on (out of memory, a child that dies or runs out of time, bad options)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mossnet.errors import OptionError

BENCHMARK = "bench_scaling"  # the ``bench`` fixture (conftest.py) loads it
TINY = ["--tiny", "--device", "cpu", "--warmup", "0", "--steps", "1"]


def test_tiny_cpu_run_writes_every_row(bench, tmp_path, capsys):
    out = tmp_path / "scaling.json"
    bench.main([*TINY, "--out", str(out), "--lengths", "16,32", "--sizes", "small,base", "--launches"])
    saved = json.loads(out.read_text())
    env = saved["env"]
    for key in ("card", "date", "commit", "torch", "execution_policy", "tokens_per_step", "matmul_tflops"):
        assert key in env, key
    assert env["tokens_per_step"] == 128 and env["paths"] == ["eager"]
    assert saved["sweeps"] == {"length": {"size": "base", "lengths": [16, 32]},
                               "size": {"seq_len": 32, "sizes": ["small", "base"]}}
    # 3 models x 2 lengths at base, and 3 models at small (base at 32 is shared): 9 jobs.
    assert len(saved["rows"]) == 9
    for r in saved["rows"]:
        assert r["status"] == "ok", r
        assert r["batch"] * r["seq_len"] == 128
        assert r["tokens_per_s"] > 0 and r["loss_finite"] and r["peak_mem_gb"] > 0
        assert r["params_active"] <= r["params_total"]
        assert r["launches"]["cpu_ops"] > 0
    by_model = {(r["model"], r["size"], r["seq_len"]): r for r in saved["rows"]}
    assert by_model[("llama", "base", 16)]["attn_implementation"] == "sdpa"
    assert by_model[("mossnet", "base", 16)]["execution_policy"]["validate_token_ids"] is False
    one_head = by_model[("ssm-1head", "base", 16)]
    assert one_head["params_active"] < by_model[("mossnet", "base", 16)]["params_active"]
    assert by_model[("mossnet", "small", 32)]["params_total"] < by_model[("mossnet", "base", 32)]["params_total"]
    checks = {(c["model"], c["path"]): c for c in saved["flat_check"]}
    assert set(checks) == {("mossnet", "eager"), ("llama", "eager"), ("ssm-1head", "eager")}
    assert checks[("llama", "eager")]["target"] == "report" and checks[("mossnet", "eager")]["target"] == "flat"
    assert all(c["verdict"] in ("flat", "not flat") for c in checks.values())
    printed = capsys.readouterr().out
    assert "| per-token cost over the lengths" in printed and "rows by status: {'ok': 9}" in printed


def test_job_runs_in_a_child_process(bench, tmp_path, monkeypatch):
    """With --isolate the measuring happens in a child: breaking it in this process changes nothing."""
    def broken(*args, **kwargs):
        raise AssertionError("measured in the parent")

    monkeypatch.setattr(bench, "measure_job", broken)
    results = bench.main([*TINY, "--isolate", "--sweeps", "length", "--models", "mossnet", "--lengths", "16"])
    (row,) = results["rows"]
    assert row["status"] == "ok" and row["model"] == "mossnet" and row["seq_len"] == 16 and row["tokens_per_s"] > 0


@pytest.mark.parametrize("code, timeout, status, says", [
    ("import sys; sys.stderr.write('device fault\\n'); sys.exit(3)", 60, "error", "exit 3: device fault"),
    ("import sys; sys.stderr.write('torch.OutOfMemoryError: CUDA out of memory.\\n'); sys.exit(1)", 60, "oom",
     "out of memory"),
    ("import time; time.sleep(60)", 1, "timeout", "timeout after"),
])
def test_a_child_that_fails_is_recorded(bench, monkeypatch, code, timeout, status, says):
    monkeypatch.setattr(bench, "job_command", lambda *a: [sys.executable, "-c", code])
    args = bench.parse_args([*TINY, "--isolate", "--paths", "eager,graph", "--job-timeout", str(timeout)])
    rows = bench.run_job_isolated(("llama", "base", 16), args, rate=1e9, timeout=timeout)
    assert [r["path"] for r in rows] == ["eager", "graph"]
    for r in rows:
        assert r["status"] == status and says in r["error"] and r["model"] == "llama" and r["batch"] == 8


def test_out_of_memory_is_a_row_not_a_crash(bench, tmp_path, monkeypatch):
    real_build = bench.build_model

    def build(model, *args, **kwargs):
        if model == "llama":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB")
        return real_build(model, *args, **kwargs)

    monkeypatch.setattr(bench, "build_model", build)
    out = tmp_path / "oom.json"
    results = bench.main([*TINY, "--sweeps", "length", "--models", "llama,mossnet", "--lengths", "16,32",
                          "--paths", "eager,graph", "--out", str(out)])
    rows = {(r["model"], r["seq_len"], r["path"]): r for r in results["rows"]}
    assert rows[("llama", 16, "eager")]["status"] == "oom"
    assert "Tried to allocate" in rows[("llama", 16, "eager")]["error"]
    assert rows[("llama", 16, "graph")]["status"] == "skipped"  # needs more memory than eager
    assert rows[("mossnet", 16, "eager")]["status"] == "ok"
    assert rows[("mossnet", 16, "graph")]["error"] == "CUDA graphs need CUDA"
    checks = {c["model"]: c for c in json.loads(out.read_text())["flat_check"] if c["path"] == "eager"}
    assert checks["llama"]["verdict"].startswith("incomplete (16: oom, 32: oom")


def test_jobs_past_the_time_budget_are_recorded_as_skipped(bench):
    results = bench.main([*TINY, "--sweeps", "length", "--models", "mossnet", "--lengths", "16,32",
                          "--hard-budget", "1"])
    assert [(r["seq_len"], r["status"], r["error"]) for r in results["rows"]] == [
        (16, "skipped", "time budget"), (32, "skipped", "time budget")]


def test_report_merges_saved_runs(bench, tmp_path, capsys):
    def rows(size, T, tps):
        return {"model": "mossnet", "size": size, "seq_len": T, "path": "eager", "status": "ok", "batch": 1,
                "tokens_per_s": tps, "params_total": 1, "mfu": 0.1, "peak_mem_gb": 1.0}

    a = {"env": {"card": "X", "date": "d", "commit": "abc", "tokens_per_step": 64},
         "sweeps": {"length": {"size": "base", "lengths": [16]}},
         "rows": [rows("base", 16, 100.0), rows("base", 64, 50.0)]}
    # A second run: the size sweep, one re-measured length (it replaces the first's row) and a
    # length-sweep run of one length (it adds to the sweep, not replaces it).
    b = {"env": {"card": "Y"}, "sweeps": {"size": {"seq_len": 16, "sizes": ["small", "base"]},
                                          "length": {"size": "base", "lengths": [64]}},
         "rows": [rows("small", 16, 200.0), rows("base", 64, 95.0)]}
    paths = []
    for name, data in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    merged = bench.main(["--report", *map(str, paths)])
    assert merged["env"]["card"] == "X"
    assert merged["sweeps"] == {"length": {"size": "base", "lengths": [16, 64]},
                                "size": {"seq_len": 16, "sizes": ["small", "base"]}}
    assert len(merged["rows"]) == 3
    (check,) = merged["flat_check"]
    assert check["verdict"] == "flat" and check["spread"] == pytest.approx(100 / 95 - 1)
    assert "commit abc" in capsys.readouterr().out


def test_bad_options_are_refused_before_any_work(bench):
    with pytest.raises(OptionError, match="not a multiple of the length"):
        bench.parse_args(["--tiny", "--device", "cpu", "--tokens-per-step", "100", "--lengths", "16,32"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "mossnet,gpt"])


def test_llama_of_each_size_matches_mossnet_total(bench):
    """The Llama compared at each size has about the MossNet preset's total parameters (meta device)."""
    meta = torch.device("meta")
    for size in bench.SIZES:
        totals = {}
        for model in ("mossnet", "llama"):
            net = bench.build_model(model, size, False, meta, max_len=2048)
            totals[model] = sum(p.numel() for p in net.parameters())
            if model == "llama":
                assert net.config._attn_implementation == "sdpa"
        assert abs(totals["llama"] / totals["mossnet"] - 1) < 0.1, (size, totals)
