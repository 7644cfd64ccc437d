"""The decomposition study: variants A-H at equal active parameters (counted on the real
models), the learning-rate inheritance, the config table, and a tiny end-to-end study."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mossnet.cli.main import main as mossnet_main
from mossnet.studies import decomposition as dec
from mossnet.models.parameter_count import state_bytes_per_layer
from mossnet.studies.arch_configs import mossnet_active, reference_config

TINY = dict(d_model=32, n_layers=2, ssm_head_dim=8, ssm_state_dim=8)


@pytest.fixture(scope="module")
def ref():
    return reference_config("tiny", 512, TINY)


@pytest.mark.parametrize("letter", dec.LETTERS)
def test_each_variant_matches_e_in_active_parameters(ref, letter):
    if not dec.available(letter):
        pytest.skip(f"MossNetConfig has no {dec.NEEDS[letter]} yet")
    target = mossnet_active(dec.dense_reference(ref))
    cfg = dec.variant_config(letter, ref)
    assert cfg.mlp_experts == 1 and cfg.mlp_top_k == 1  # dense MLP for all
    assert abs(mossnet_active(cfg) - target) <= 0.005 * target
    for key, value in dec.time_mixer(letter, ref).items():  # the variant is what its letter says
        assert getattr(cfg, key) == value


def test_variant_shapes(ref):
    E, k, P, N = ref.ssm_experts, ref.ssm_top_k, ref.ssm_head_dim, ref.ssm_state_dim
    a, c, d, g = (dec.variant_config(x, ref) for x in "ACDG")
    assert (a.ssm_experts, a.ssm_head_dim) == (1, k * P)  # the same active value width
    assert c.ssm_top_k == c.ssm_experts == k and d.ssm_top_k == d.ssm_experts == E  # dense: every head, gated
    assert d.ssm_experts * d.ssm_head_dim == k * P
    # G: A's total state (SSM states and conv windows per layer), to the nearest state dim
    target = state_bytes_per_layer(a)

    def gap(n: int) -> int:
        return abs(state_bytes_per_layer(g.__class__(**{**g.to_dict(), "ssm_state_dim": n})) - target)

    assert gap(g.ssm_state_dim) <= min(gap(g.ssm_state_dim - 1), gap(g.ssm_state_dim + 1))
    assert (g.ssm_experts, g.ssm_top_k, g.ssm_head_dim) == (E, k, P) and g.ssm_state_dim < N
    assert dec.variant_config("F", ref).state_update == "all"
    assert dec.variant_config("E", ref).mlp_hidden_dim == 8 * round(8 * ref.d_model / 3 / 8)


def test_every_variant_inherits_from_a_swept_one():
    assert set(dec.LR_FROM) == set(dec.LETTERS)
    assert all(dec.LR_FROM[x] in dec.SWEPT for x in dec.LETTERS)
    assert all(dec.LR_FROM[x] == x for x in dec.SWEPT)
    with pytest.raises(ValueError, match="inherit"):
        dec.check_letters(["F"])  # F takes E's rate: E must run
    with pytest.raises(ValueError, match="unknown"):
        dec.check_letters(["Z"])


def test_best_rates_pick_the_lowest_finished_loss_on_seed_0():
    def r(v, lr, loss, seed=0, diverged=None):
        return {"variant": v, "lr": lr, "val_loss": loss, "seed": seed, "diverged": diverged}

    results = [r("A", 1e-3, 4.2), r("A", 3e-3, 4.0), r("A", 1e-2, 3.0, diverged="not finite"),
               r("E", 1e-3, 4.1), r("E", 3e-3, 4.1), r("C", 3e-3, 3.5, seed=1), r("F", 1e-3, 1.0)]
    assert dec.best_rates(results) == {"A": 3e-3, "E": 1e-3}  # a tie goes to the lower rate; C has no seed 0


def test_config_table_counts_come_from_the_models(ref):
    table = dec.config_table(ref, tokens=1024)
    rows = table.splitlines()[2:]
    assert len(rows) == len(dec.LETTERS)
    e = dec.config_row("E", ref, 1024)
    assert f"| {e['active']:,} | {e['total']:,} |" in rows[dec.LETTERS.index("E")]
    a = dec.config_row("A", ref, 1024)
    assert a["state_bytes"] < e["state_bytes"] and a["active"] == pytest.approx(e["active"], rel=0.005)
    for letter, row in zip(dec.LETTERS, rows):
        assert ("needs `" in row) == (not dec.available(letter))


def test_table_command_prints_the_table(capsys):
    assert dec.main(["--vocab", "512", "--model", "d_model=32", "n_layers=2", "ssm_head_dim=8", "ssm_state_dim=8",
                     "--budget-tokens", "4096", "--seq-len", "64", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "| variant | E | k | P | N |" in out and "4,096" in out and "E: MossNet E=4, top-2" in out


def test_tiny_decomposition_study_end_to_end(tmp_path, tiny_corpus, capsys):
    """Sweep (A and E at two rates, seed 0), then every variant on every seed at its inherited
    rate: F takes E's; the sweep's best runs are reused as seed 0. Probes and paired differences
    are in the results and the report; a second call re-runs nothing."""
    out = tmp_path / "dec"
    argv = ["compare", "--study", "decomposition", "--data", str(tiny_corpus), "--out", str(out),
            "--archs", "A,E,F", "--seeds", "2", "--lr", "3e-3", "--lr-sweep", "1e-2", "--budget-tokens", "256",
            "--batch-size", "4", "--seq-len", "32", "--eval-points", "1", "--eval-tokens", "64",
            "--probe-tokens", "128", "--jobs", "1", "--threads", "1",
            "--model", "d_model=32", "n_layers=1", "ssm_head_dim=8", "ssm_state_dim=8"]
    assert mossnet_main(argv) == 0
    rows = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    rates = dec.best_rates(list(rows.values()))
    assert set(rates) == {"A", "E"}
    want = {f"{x}-lr{lr:g}-s0" for x in "AE" for lr in (3e-3, 1e-2)}
    want |= {f"{x}-lr{rates[dec.LR_FROM[x]]:g}-s{s}" for x in "AEF" for s in (0, 1)}
    assert set(rows) == want
    f = rows[f"F-lr{rates['E']:g}-s1"]
    assert f["model"]["state_update"] == "all" and f["probes"] is True
    probes = f["probe_metrics"]
    assert np.isfinite(probes["loss_second_copy"]) and 0 <= probes["routers"]["top1_same"] <= 1
    report = (out / "results.md").read_text()
    assert "Paired differences to A: single head" in report and "router load entropy" in report
    assert "What each variant isolates" in report  # F against E, the one planned pair of A, E, F
    assert "| F: E, state_update=\"all\" | E: MossNet E=4, top-2 | val loss |" in report
    capsys.readouterr()
    assert mossnet_main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("runs already have a result: skipped") == 2 and "[1/" not in again  # both stages


@pytest.mark.parametrize("archs,message", [("F", "inherit their learning rate from E"), ("A,Z", "unknown variant")])
def test_bad_variant_lists_are_one_line_errors(tmp_path, tiny_corpus, capsys, archs, message):
    argv = ["compare", "--study", "decomposition", "--data", str(tiny_corpus), "--out", str(tmp_path / "d"),
            "--archs", archs, "--device", "cpu"]
    assert mossnet_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_the_report_and_plot_read_each_variant_at_its_inherited_rate_only():
    from mossnet.studies.report_paired import decomposition_main_runs

    def run(variant, lr, seed, loss):
        return {"variant": variant, "lr": lr, "seed": seed, "val_loss": loss, "label": variant, "diverged": None}

    results = [run("A", 1e-3, 0, 4.2), run("A", 3e-3, 0, 4.0), run("A", 1e-2, 0, 4.1), run("A", 3e-3, 1, 4.05),
               run("E", 3e-3, 0, 4.3), run("E", 1e-2, 0, 4.25), run("F", 1e-2, 1, 4.2), run("F", 3e-3, 1, 4.4),
               run("B", 3e-3, 0, 4.0)]  # B inherits C's rate, and C has not run: left out
    kept = {(r["variant"], r["lr"], r["seed"]) for r in decomposition_main_runs(results)}
    assert kept == {("A", 3e-3, 0), ("A", 3e-3, 1), ("E", 1e-2, 0), ("F", 1e-2, 1)}
