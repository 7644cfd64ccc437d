"""MQAR calibrated before it ranks: the gate's ladder, its verdict, the ranking's matched state,
and tiny CPU versions of both studies."""

from __future__ import annotations

import json

import pytest

from mossnet.cli.main import main as mossnet_main
from mossnet.studies import mqar_calibration as cal
from mossnet.studies import report_paired
from mossnet.studies.mqar import execute_mqar
from mossnet.studies.mqar_data import slice_key
from mossnet.studies.specs import MQARRunSpec

TINY_SCHEDULE = ["--mqar-vocab", "256", "--mqar-steps", "3", "--mqar-batch-size", "4", "--mqar-eval-examples", "4",
                 "--mqar-eval-points", "1", "--mqar-warmup", "1", "--jobs", "1", "--threads", "1", "--device", "cpu"]
SLICES = ["64x4", "128x8", "256x16", "256x32", "256x64"]


def test_the_ladder_starts_at_zoology_and_moves_one_factor_at_a_time():
    rungs = cal.ladder(64)
    assert rungs[0].name == "zoology" and rungs[0].options == cal.ZOOLOGY_ATTENTION
    assert rungs[0].options["dropout"] == 0.1 and rungs[0].options["positions"] == "learned"
    assert rungs[-1].arch == "llama_plain" and all(r.arch == "attention" for r in rungs[:-1])
    for before, after in zip(rungs[:-2], rungs[1:-1]):
        changed = {k for k in after.options if after.options[k] != before.options.get(k)}
        assert changed and set(before.options) <= set(after.options)  # cumulative: nothing undone
    last = rungs[-2].options  # our Llama's choices, one rung before transformers' Llama itself
    assert (last["positions"], last["norm"], last["bias"], last["dropout"], last["state_mixer"]) == (
        "rope", "rmsnorm", False, 0.0, "swiglu")
    assert "heads" not in [r.name for r in rungs]  # at d=64 our Llama has one head of 64, as Zoology
    assert [r.name for r in cal.ladder(128)][-2] == "heads"


def _gate_result(rung, lr, acc, d=64, seed=0):
    return {"variant": rung, "lr": lr, "seed": seed, "d_model": d, "label": rung,
            "slices": {cal.GATE_SLICE: {"accuracy": acc}}}


def test_gate_verdict_names_the_first_failing_rung():
    ok = [_gate_result("zoology", 1e-3, 0.995), _gate_result("zoology", 3e-3, 0.5),
          _gate_result("no_dropout", 1e-3, 0.999), _gate_result("rope", 1e-3, 0.4), _gate_result("rmsnorm", 1e-3, 1.0)]
    verdict = cal.gate_verdict(ok)
    assert verdict["zoology_passes"] and verdict["blocked_by"] == "rope"
    assert [r["rung"] for r in verdict["rungs"]] == ["zoology", "no_dropout", "rope", "rmsnorm"]
    assert verdict["rungs"][0]["best_lr"] == 1e-3
    failing = cal.gate_verdict([_gate_result("zoology", 1e-3, 0.98), _gate_result("zoology", 1e-3, 1.0, seed=1)])
    assert failing["rungs"][0]["accuracy"] == pytest.approx(0.99) and failing["zoology_passes"]  # mean over seeds
    assert not cal.gate_verdict([_gate_result("zoology", 1e-3, 0.9)])["zoology_passes"]


@pytest.mark.parametrize("n", [8, 16, 64])
def test_ranked_models_share_total_state_and_value_width(n):
    """The same active value width d/2; per-layer state (SSM and conv windows, read off the real
    cache) equal to MossNet's to the nearest state dim."""
    from mossnet import MossNetConfig
    from mossnet.models.parameter_count import state_bytes_per_layer

    d = 64
    shapes = {a: cal.rank_model(a, d, n) for a in cal.RANK_ARCHS}

    def state(model, **change):
        return state_bytes_per_layer(MossNetConfig(d_model=d, n_layers=1, **{**model, "mlp_experts": 1, "mlp_top_k": 1,
                                                                            **change}))

    target = state(shapes["mossnet"])
    for arch, model in shapes.items():
        assert model["ssm_top_k"] * model["ssm_head_dim"] == d // 2 and model["mlp_experts"] == 0
        N = model["ssm_state_dim"]
        gap = abs(state(model) - target)
        assert gap <= abs(state(model, ssm_state_dim=N + 1) - target)
        assert N == 1 or gap <= abs(state(model, ssm_state_dim=N - 1) - target)
        assert gap <= 0.05 * target


def test_rank_best_rates_are_picked_per_cell_on_seed_0():
    def r(variant, n, lr, acc, seed=0):
        return {"variant": variant, "lr": lr, "seed": seed, "accuracy": acc, "diverged": False,
                "model": cal.rank_model(variant, 64, n)}

    results = [r("mossnet", 16, 3e-3, 0.4), r("mossnet", 16, 1e-2, 0.6), r("single_head", 16, 3e-3, 0.5),
               r("single_head", 16, 1e-2, 0.5), r("mossnet", 64, 3e-3, 0.9, seed=1)]
    n_single = cal.rank_model("single_head", 64, 16)["ssm_state_dim"]
    assert cal.rank_best_rates(results) == {("mossnet", 16): 1e-2, ("single_head", n_single): 3e-3}


def test_a_mixture_run_scores_every_slice_and_stops_early(tmp_path):
    spec = MQARRunSpec(name="g/x", result=str(tmp_path / "r.json"), arch="attention", d_model=16, lr=1e-3, seed=0,
                       model=dict(cal.ZOOLOGY_ATTENTION), mixture="zoology", seq_len=0, num_pairs=0, vocab_size=256,
                       steps=6, batch_size=4, eval_examples=4, eval_points=3, stop_slice=cal.GATE_SLICE,
                       stop_accuracy=0.0, device="cpu", threads=1)
    r = execute_mqar(spec)
    assert sorted(r["slices"], key=slice_key) == SLICES and r["eval_queries"] == 4 * (4 + 8 + 16 + 32 + 64)
    assert r["stopped_at_step"] == 2 and not r["diverged"]  # the first curve point reaches 0.0
    assert [len(c) for c in r["slice_curves"].values()] == [1] * 5
    assert r["params"]["state_kind"] == "kv_cache"


def test_tiny_gate_end_to_end(tmp_path, capsys):
    out = tmp_path / "gate"
    argv = ["compare", "--study", "mqar_gate", "--out", str(out), "--archs", "zoology,swiglu,llama", "--widths", "16",
            "--lrs", "1e-3", *TINY_SCHEDULE]
    assert mossnet_main(argv) == 0
    results = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/result.json"))]
    assert sorted(r["variant"] for r in results) == ["llama", "swiglu", "zoology"]
    assert all(sorted(r["slices"], key=slice_key) == SLICES and r["vocab_size"] == 256 for r in results)
    assert "MQAR gate: accuracy on the 128x8 slice" in (out / "results.md").read_text()
    capsys.readouterr()
    assert cal.main([str(out)]) == 3  # three steps do not pass the gate: the ranking must wait
    assert "does not pass" in capsys.readouterr().out
    assert cal.main([str(tmp_path / "none")]) == 4


def test_tiny_ranking_end_to_end(tmp_path):
    if not cal.mlp_free_supported():
        pytest.skip("MossNetConfig does not accept mlp_experts=0 yet")
    out = tmp_path / "rank"
    argv = ["compare", "--study", "mqar_rank", "--out", str(out), "--archs", "single_head,mossnet", "--widths", "16",
            "--state-dims", "2,4", "--lrs", "1e-3", "--seeds", "2", *TINY_SCHEDULE]
    assert mossnet_main(argv) == 0
    results = [json.loads(p.read_text()) for p in out.glob("runs/*/result.json")]
    assert len(results) == 2 * 2 * 2  # the seed-0 sweep, then seed 1 at each cell's best rate
    for n in (2, 4):  # per state size, the models' per-layer states agree to the nearest state dim
        states = [r["params"]["state_bytes_per_layer"] for r in results if f"-n{n}-" in r["name"]]
        assert len(states) == 4 and max(states) - min(states) <= 0.25 * max(states)
    report = (out / "results.md").read_text()
    assert "± " in report and "256x64" in report
    # per matched state, MossNet's paired per-seed differences to the single head, overall and hardest slice
    assert report.count("Paired differences at ") == 2
    assert report.count("| MossNet (E=4, k=2, P=d/4) | single head (E=1, P=d/2) | overall |") == 2
    # MossNet routes (top-2 of 4): its routers along training, one row per state size; the single head has none
    assert "Routers along training" in report
    assert report.count("| MossNet (E=4, k=2, P=d/4) | ") == 2 + 2 + 4  # ranking, routers, paired rows (2 metrics)
    assert all(len(r["router_curve"]) == 1 for r in results if r["variant"] == "mossnet")
    assert all(r["router_curve"] == [] for r in results if r["variant"] == "single_head")
    # one seed of a cell: its accuracies alone, no "± 0.000" that would read as a measured spread
    seed0 = [r for r in results if r["seed"] == 0]
    table = report_paired.rank_table(seed0)
    assert "±" not in table and len(table.splitlines()) == 2 + 4, table
