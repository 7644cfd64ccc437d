"""Tiny end-to-end studies on the CPU: matched configs, the runner's skip-if-done, reports."""

from __future__ import annotations

import json
import numpy as np
import pytest

from mossnet.cli.main import main as mossnet_main


def test_variants_are_matched_in_active_parameters():
    from mossnet.studies.arch_configs import ARCHS, build_config, describe_arch, reference_config

    ref = reference_config("tiny", 4096)
    target = describe_arch("mossnet", ref, 128)["active"]
    for arch in ARCHS:
        cfg = build_config(arch, ref, seq_len=128)
        info = describe_arch(arch, cfg, 128)
        # Mamba-2 steps its width by whole `expand`s and Llama its depth by whole layers
        tol = 0.08 if arch in ("mamba2", "llama") else 0.01
        assert abs(info["active"] - target) <= tol * target, (arch, info["active"], target)
        assert info["d_model"] == ref.d_model
        assert arch == "llama" or info["n_layers"] == ref.n_layers
    single = build_config("single_head", ref, 128)
    assert single.ssm_experts == 1 and single.ssm_head_dim == ref.ssm_top_k * ref.ssm_head_dim
    assert single.mlp_experts == 1
    single_moe = build_config("single_head_moe", ref, 128)
    assert single_moe.ssm_experts == 1 and single_moe.mlp_experts == ref.mlp_experts


def test_ablation_mlp_choices_keep_active_parameters():
    from mossnet.studies.arch_configs import mossnet_active, reference_config
    from mossnet.studies.lm_study import variants

    ref = reference_config("tiny", 4096)
    target = mossnet_active(ref)
    for name in ("mlp_dense", "shared_expert"):
        over = variants("ablations", ref, [name])[name]["overrides"]
        cfg = ref.__class__(**{**ref.to_dict(), **over})
        assert abs(mossnet_active(cfg) - target) <= 0.01 * target


def test_tiny_mqar_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "mqar"
    argv = ["compare", "--study", "mqar", "--out", str(out), "--archs", "mossnet,llama", "--widths", "16",
            "--pairs", "2", "--lrs", "1e-3,3e-3", "--mqar-seq-len", "12", "--mqar-vocab", "16",
            "--mqar-steps", "3", "--mqar-batch-size", "4", "--mqar-layers", "1", "--mqar-eval-examples", "8",
            "--jobs", "1", "--threads", "1"]
    assert mossnet_main(argv) == 0
    results = sorted(out.glob("runs/*/result.json"))
    assert len(results) == 4
    r = json.loads(results[0].read_text())
    assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_queries"] == 16 and r["params"]["active"] > 0
    report = (out / "results.md").read_text()
    assert "2 pairs" in report and "Llama" in report
    stamp = results[0].stat().st_mtime_ns
    capsys.readouterr()
    assert mossnet_main(argv) == 0  # everything done: nothing re-runs
    assert "4 of 4 runs already have a result" in capsys.readouterr().out
    assert results[0].stat().st_mtime_ns == stamp
    changed = [a if a != "3" else "5" for a in argv]  # --mqar-steps 5: the old results do not answer it
    assert mossnet_main(changed) == 2
    assert "made with other settings" in capsys.readouterr().err


def test_tiny_lm_study_end_to_end(tmp_path, tiny_corpus):
    data = tiny_corpus
    out = tmp_path / "lm"
    argv = ["compare", "--study", "lm", "--data", str(data), "--out", str(out), "--archs", "mossnet,single_head,llama",
            "--seeds", "1", "--budget-tokens", "256", "--batch-size", "4", "--seq-len", "32", "--eval-points", "2",
            "--eval-tokens", "128", "--jobs", "1", "--threads", "1",
            "--model", "d_model=32", "n_layers=1", "ssm_head_dim=8", "ssm_state_dim=8", "mlp_hidden_dim=32"]
    assert mossnet_main(argv) == 0
    rows = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    assert set(rows) == {"mossnet-s0", "single_head-s0", "llama-s0"}
    for r in rows.values():
        assert r["tokens"] == 256 and np.isfinite(r["val_loss"]) and r["val_bits_per_byte"] > 0
        assert r["val_curve"][-1][0] == 256 and len(r["val_curve"]) == 2
    assert rows["single_head-s0"]["params"]["state_bytes_per_layer"] < rows["mossnet-s0"]["params"]["state_bytes_per_layer"]
    table = (out / "results.md").read_text()
    assert "bits/byte" in table and "single-head" in table and "bigram" in table
    pytest.importorskip("matplotlib")
    assert (out / "lm.png").stat().st_size > 1000


def test_tiny_ablations_run(tmp_path, tiny_corpus):
    data = tiny_corpus
    out = tmp_path / "abl"
    argv = ["compare", "--study", "ablations", "--data", str(data), "--out", str(out),
            "--archs", "reference,mlp_dense", "--seeds", "1", "--budget-tokens", "128", "--batch-size", "4",
            "--seq-len", "32", "--eval-points", "1", "--eval-tokens", "64", "--jobs", "1", "--threads", "1",
            "--model", "d_model=32", "n_layers=1", "ssm_head_dim=8", "ssm_state_dim=8", "mlp_hidden_dim=32"]
    assert mossnet_main(argv) == 0
    rows = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    assert set(rows) == {"reference-s0", "mlp_dense-s0"}
    assert rows["mlp_dense-s0"]["model"]["mlp_experts"] == 1
    ref, dense = rows["reference-s0"]["params"]["active"], rows["mlp_dense-s0"]["params"]["active"]
    assert abs(ref - dense) <= 0.02 * ref
    assert "MoE MLP off" in (out / "results.md").read_text()
