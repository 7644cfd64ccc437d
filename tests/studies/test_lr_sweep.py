"""The language-model study's learning-rate sweep (``--lr-sweep``) and the ``--cuda-graph`` option:
which runs a sweep adds, how the report picks each model's best rate, and a diverged run."""

from __future__ import annotations

import json

import numpy as np

from mossnet.cli.main import main as mossnet_main
from mossnet.studies.lm_study import make_specs, run_name
from mossnet.studies.report import lm_sweep_table

TINY_MODEL = ["--model", "d_model=32", "n_layers=1", "ssm_head_dim=8", "ssm_state_dim=8", "mlp_hidden_dim=32"]


def test_run_names_keep_the_shared_rate_plain():
    assert run_name("llama", 0, 3e-3, 3e-3) == "llama-s0"  # the names of a study made before sweeps
    assert run_name("llama", 1, 1e-3, 3e-3) == "llama-lr0.001-s1"


def test_sweep_runs_only_the_first_seeds(tiny_corpus, tmp_path):
    specs = make_specs("lm", tmp_path, str(tiny_corpus), archs=["mossnet", "mamba2"], seeds=(0, 1, 2), lr=3e-3,
                       lr_sweep=[1e-3, 3e-3, 1e-2, 1e-3], sweep_seeds=2, cuda_graph=True)
    names = [s.name.split("/", 1)[1] for s in specs]
    assert names[:7] == ["mossnet-s0", "mossnet-s1", "mossnet-s2", "mossnet-lr0.001-s0", "mossnet-lr0.001-s1",
                         "mossnet-lr0.01-s0", "mossnet-lr0.01-s1"]  # the shared rate and repeats are not swept twice
    assert len(specs) == 14
    by_name = {s.name: s for s in specs}
    assert by_name["lm/mossnet-lr0.01-s1"].lr == 1e-2
    # --cuda-graph applies to our models, not to transformers' kernel-less Mamba-2
    assert by_name["lm/mossnet-s0"].cuda_graph and not by_name["lm/mamba2-s0"].cuda_graph


def _result(variant, lr, seed, loss, diverged=None):
    return {"variant": variant, "label": variant.upper(), "lr": lr, "seed": seed, "val_loss": loss,
            "diverged": diverged}


def test_sweep_table_marks_each_models_best_rate_and_divergence():
    results = [
        _result("a", 3e-3, 0, 4.0), _result("a", 3e-3, 1, 3.0),  # seed 1 is not part of the sweep
        _result("a", 1e-3, 0, 4.2), _result("a", 1e-2, 0, None, diverged="not finite"),
        _result("b", 3e-3, 0, 4.1), _result("b", 1e-3, 0, 3.9), _result("b", 1e-2, 0, 4.5),
        _result("c", 3e-3, 0, 4.05),  # run at the shared rate only
    ]
    table = lm_sweep_table(results, 3e-3)
    lines = table.splitlines()
    assert "seed 0 " in lines[0] and "shared rate is 0.003" in lines[0]
    assert lines[2] == "| model | lr 0.001 | lr 0.003 | lr 0.01 | best lr (loss) |"
    # rows ordered by their best loss: B (3.9 at 1e-3) before A (4.0 at 3e-3; seed 1's 3.0 is not used)
    assert lines[4] == "| B | **3.900** | 4.100 | 4.500 | 0.001 (3.900) |"
    assert lines[5] == "| A | 4.200 | **4.000** | diverged | 0.003 (4.000) |"
    assert lines[6] == "| C |  | 4.050 |  | not swept |"
    assert lm_sweep_table([_result("a", 3e-3, 0, 4.0)], 3e-3) == ""  # no sweep: no table


def test_lm_study_with_a_sweep_end_to_end(tiny_corpus, tmp_path, monkeypatch, capsys):
    """A sweep adds runs at the other rates on seed 0 only; a run that diverges is a result (not
    retried on the next call) and shows as such; the main table keeps the shared rate."""
    import mossnet.train.loop as loop

    real_train = loop.train

    def train(cfg):
        if cfg.lr == 5e-2 and cfg.arch == "llama":
            raise loop.TrainingDiverged("training diverged at step 1: the loss is not finite (test)")
        return real_train(cfg)

    monkeypatch.setattr(loop, "train", train)
    out = tmp_path / "lm"
    argv = ["compare", "--study", "lm", "--data", str(tiny_corpus), "--out", str(out), "--archs", "mossnet,llama",
            "--seeds", "2", "--lr", "3e-3", "--lr-sweep", "1e-2,5e-2", "--budget-tokens", "256", "--batch-size", "4",
            "--seq-len", "32", "--eval-points", "1", "--eval-tokens", "64", "--jobs", "1", "--threads", "1",
            *TINY_MODEL]
    assert mossnet_main(argv) == 0
    rows = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    assert set(rows) == {"mossnet-s0", "mossnet-s1", "llama-s0", "llama-s1", "mossnet-lr0.01-s0",
                         "llama-lr0.01-s0", "mossnet-lr0.05-s0", "llama-lr0.05-s0"}
    bad = rows["llama-lr0.05-s0"]
    assert "diverged" in bad["diverged"] and bad["val_loss"] is None and bad["params"]["active"] > 0
    assert rows["mossnet-lr0.05-s0"]["diverged"] is None and np.isfinite(rows["mossnet-lr0.05-s0"]["val_loss"])
    report = (out / "results.md").read_text()
    main_table = report.split("Learning-rate sweep")[0]
    assert main_table.count("| 2 |") == 2  # the shared-rate table: both models, both seeds
    assert "Paired differences to MossNet" in main_table and "| Transformer (Llama" in main_table.split("Paired")[1]
    sweep = report.split("Learning-rate sweep")[1]
    assert "| lr 0.003 | lr 0.01 | lr 0.05 |" in sweep and "diverged" in sweep
    capsys.readouterr()
    assert mossnet_main(argv) == 0
    assert "8 of 8 runs already have a result" in capsys.readouterr().out


def test_cuda_graph_needs_cuda(tmp_path, capsys):
    argv = ["compare", "--study", "mqar", "--out", str(tmp_path), "--device", "cpu", "--cuda-graph",
            "--archs", "llama", "--widths", "16", "--pairs", "2", "--lrs", "1e-3", "--mqar-steps", "2"]
    assert mossnet_main(argv) == 2
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err
    assert mossnet_main(argv + ["--report-only"]) == 0  # runs nothing: the report can be rebuilt anywhere
