"""CI smoke test of ``benchmarks/bench_model.py``: every section runs at tiny sizes on the CPU
and writes a complete JSON report (the real numbers come from a GPU run; see BENCHMARKS.md)."""

from __future__ import annotations

import json

BENCHMARK = "bench_model"  # the ``bench`` fixture (conftest.py) loads it


def test_bench_model_tiny_cpu(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--tiny", "--device", "cpu", "--out", str(out), "--train-models", "mossnet-base,llama-135m,ssm-1head"])
    saved = json.loads(out.read_text())
    assert saved["env"]["tiny"] is True and saved["env"]["scan_impl"] == "chunked"
    assert [r["model"] for r in saved["train"]] == ["mossnet-base", "llama-135m", "ssm-1head"]
    for r in saved["train"]:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["params_active"] <= r["params_total"] and r["mfu"] > 0
    for r in saved["prefill"]:
        assert "error" not in r and r["best_ms"] > 0, r
    paths = {(r["model"], r["batch"], r["path"]) for r in saved["decode"]}
    assert ("mossnet-base", 1, "eager") in paths and ("llama-135m", 3, "generate") in paths
    for r in saved["decode"]:
        assert "error" not in r, r
    memory = {(r["model"], r["context"]): r for r in saved["memory"]}
    # The recurrent state is flat in the context; the KV cache grows linearly.
    assert memory[("mossnet-base", 16)]["state_bytes"] == memory[("mossnet-base", 48)]["state_bytes"]
    assert memory[("llama-135m", 48)]["state_bytes"] == 3 * memory[("llama-135m", 16)]["state_bytes"]
    for r in saved["memory"]:
        assert r.get("measured_state_bytes", r["state_bytes"]) == r["state_bytes"], r
    assert "| training" in capsys.readouterr().out
    assert results["env"]["wall_s"] > 0


def test_single_head_baseline_shape(bench):
    cfg = bench.mossnet_config("base", tiny=False)
    one = bench.single_head_config(cfg)
    assert (one.ssm_experts, one.ssm_top_k, one.ssm_head_dim) == (1, 1, cfg.ssm_top_k * cfg.ssm_head_dim)
    assert one.d_model == cfg.d_model and one.mlp_experts == cfg.mlp_experts and one.vocab_size == 49152
