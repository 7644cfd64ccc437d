"""The MQAR study's runs: warmup and accuracy-curve options, and refusing stale results."""

from __future__ import annotations

import json

import pytest

from mossnet.cli.main import main as mossnet_main
from mossnet.studies.mqar import curve_steps, examples_to, execute_mqar, make_specs

TINY = ["--archs", "llama", "--widths", "16", "--pairs", "2", "--lrs", "1e-3", "--mqar-seq-len", "12",
        "--mqar-vocab", "16", "--mqar-steps", "4", "--mqar-batch-size", "4", "--mqar-layers", "1",
        "--mqar-eval-examples", "8", "--jobs", "1", "--threads", "1"]


def test_curve_steps_are_even_and_end_at_the_last_step():
    assert curve_steps(100, 0) == []
    assert curve_steps(100, 4) == [25, 50, 75, 100]
    assert curve_steps(3, 10) == [1, 2, 3]  # never more points than steps
    assert curve_steps(10, 3) == [3, 7, 10]


def test_examples_to_threshold():
    curve = [[100, 0.1], [200, 0.95], [300, 0.99]]
    assert examples_to(curve, 0.9) == 200
    assert examples_to(curve, 0.999) is None
    assert examples_to([], 0.9) is None


def test_specs_carry_warmup_and_eval_points(tmp_path):
    (spec,) = make_specs(tmp_path, archs=("llama",), widths=(16,), pairs=(2,), lrs=(1e-3,), warmup_steps=7,
                         eval_points=3)
    assert spec.warmup_steps == 7 and spec.eval_points == 3
    (old,) = make_specs(tmp_path, archs=("llama",), widths=(16,), pairs=(2,), lrs=(1e-3,))
    assert old.warmup_steps == 20 and old.eval_points == 0  # the defaults of the CPU grid


def test_a_run_records_its_settings_and_curve(tmp_path, capsys):
    (spec,) = make_specs(tmp_path, archs=("llama",), widths=(16,), pairs=(2,), lrs=(1e-3,), seq_len=12,
                         vocab_size=16, steps=6, batch_size=4, n_layers=1, eval_examples=8, warmup_steps=2,
                         eval_points=3, device="cpu", threads=1)
    r = execute_mqar(spec)
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["2/6", "4/6", "6/6"]  # one log line per curve point
    assert all(f"accuracy {acc:.3f}" in line for line, (_, acc) in zip(progress, r["accuracy_curve"]))
    assert r["warmup_steps"] == 2 and r["weight_decay"] == 0.1 and r["eval_points"] == 3
    assert [ex for ex, _ in r["accuracy_curve"]] == [8, 16, 24]  # examples seen at steps 2, 4, 6
    assert all(0.0 <= acc <= 1.0 for _, acc in r["accuracy_curve"])
    assert r["examples_to_90"] is None or r["examples_to_90"] in (8, 16, 24)
    assert 0.0 <= r["accuracy"] <= 1.0 and r["eval_queries"] == 16


def test_rerun_with_another_warmup_is_refused(tmp_path, capsys):
    """Before, the result JSON did not record warmup or weight decay, so a re-run with another
    schedule silently reused the old numbers."""
    out = str(tmp_path / "mqar")
    argv = ["compare", "--study", "mqar", "--out", out, *TINY]
    assert mossnet_main(argv) == 0
    (result,) = (tmp_path / "mqar").glob("runs/*/result.json")
    r = json.loads(result.read_text())
    assert r["warmup_steps"] == 20 and r["accuracy_curve"] == [] and r["examples_to_90"] is None
    capsys.readouterr()
    assert mossnet_main(argv + ["--mqar-warmup", "2"]) == 2
    assert "warmup_steps" in capsys.readouterr().err
    assert mossnet_main(argv + ["--mqar-warmup", "20"]) == 0  # the default, spelled out: same run


@pytest.mark.parametrize("bad", [["--mqar-warmup", "x"], ["--mqar-eval-points", "1.5"]])
def test_bad_option_values_are_rejected(tmp_path, bad):
    with pytest.raises(SystemExit):
        mossnet_main(["compare", "--study", "mqar", "--out", str(tmp_path), *TINY, *bad])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["mossnet", "llama"])
def test_mqar_graph_step_matches_eager(tmp_path, arch):
    """The MQAR run replayed from a CUDA graph trains like the eager run: the same loss, step by
    step (fp32, so that only the kernels' summation order differs), with eager evaluations of the
    accuracy curve in between the replays."""
    import numpy as np

    curves = {}
    for graph in (False, True):
        (spec,) = make_specs(tmp_path / str(graph), archs=(arch,), widths=(32,), pairs=(4,), lrs=(3e-3,), seq_len=32,
                             vocab_size=32, steps=8, batch_size=16, n_layers=2, eval_examples=32, warmup_steps=2,
                             eval_points=4, device="cuda", dtype="fp32", cuda_graph=graph)
        r = execute_mqar(spec)
        assert r["cuda_graph"] is graph
        curves[graph] = [loss for _, loss in r["train_loss_curve"]]
        curves[graph, "accuracy"] = [acc for _, acc in r["accuracy_curve"]]
    assert len(curves[True]) == 8
    np.testing.assert_allclose(curves[True], curves[False], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(curves[True, "accuracy"], curves[False, "accuracy"], atol=0.02)
