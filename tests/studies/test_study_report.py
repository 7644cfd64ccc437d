"""The study reports: the LM plot keeps the final whole-split score apart from the
validation-subset curve; paired per-seed differences and the decision rule."""

from mossnet.studies.report import _intermediate


def _run(curve, val_loss):
    return {"val_curve": curve, "val_loss": val_loss}


def test_final_whole_split_point_is_not_part_of_the_curve():
    curve = [[100, 5.0], [200, 4.6], [210, 4.4]]
    assert _intermediate(_run(curve, 4.4)) == [[100, 5.0], [200, 4.6]]


def test_curve_is_kept_whole_when_its_last_point_is_not_the_final_score():
    curve = [[100, 5.0], [200, 4.6]]
    assert _intermediate(_run(curve, 4.3)) == curve
    assert _intermediate(_run(curve, None)) == curve
    assert _intermediate(_run([[100, 5.0]], 5.0)) == [[100, 5.0]]  # a lone point stays


def _seed_run(variant, seed, loss, label=None):
    return {"variant": variant, "seed": seed, "val_loss": loss, "label": label or variant.upper(), "diverged": None}


def test_paired_differences_and_the_decision_rule():
    from mossnet.studies.report_paired import counts, paired_differences, paired_table

    results = [_seed_run("a", 0, 4.00), _seed_run("a", 1, 4.10), _seed_run("a", 2, 3.90),
               _seed_run("b", 0, 3.90), _seed_run("b", 1, 4.01), _seed_run("b", 2, 3.79),  # consistent gap
               _seed_run("c", 0, 3.80), _seed_run("c", 1, 4.20), _seed_run("c", 2, 3.95)]  # noise
    diffs = paired_differences(results, "a")
    assert [round(d, 3) for d in diffs["b"][0]] == [-0.1, -0.09, -0.11]
    mean, sd = diffs["b"][1], diffs["b"][2]
    assert round(mean, 3) == -0.1 and round(sd, 3) == 0.01 and counts(mean, sd, 3)
    assert not counts(diffs["c"][1], diffs["c"][2], 3)
    assert not counts(-0.5, 0.0, 1)  # one seed never counts
    table = paired_table(results, "a")
    assert "| B | A | val loss | -0.100 / -0.090 / -0.110 | -0.100 ± 0.010 | **counts** |" in table
    assert "| C | A | val loss |" in table and "within spread" in table
    assert paired_table(results[:3], "a") == ""  # nothing to pair


def test_contrast_table_reads_each_pair_against_its_own_reference():
    from mossnet.studies.report_paired import contrast_table

    results = [_seed_run("a", s, 4.0 + 0.1 * s) for s in range(3)]
    results += [_seed_run("b", s, 3.9 + 0.1 * s) for s in range(3)]  # b - a = -0.1 every seed
    results += [_seed_run("c", s, 3.95 + 0.1 * s + 0.001 * s) for s in range(3)]  # c - b = +0.05, +0.051, +0.052
    table = contrast_table(results, [("b", "a"), ("c", "b"), ("c", "z")], (("val_loss", "val loss"),), "Pairs")
    assert table.startswith("Pairs (same seed = same data order")
    assert "| B | A | val loss | -0.100 / -0.100 / -0.100 | -0.100 ± 0.000 | **counts** |" in table
    assert "| C | B | val loss | +0.050 / +0.051 / +0.052 | +0.051 ± 0.001 | **counts** |" in table
    assert "| Z |" not in table  # a pair with a variant that never ran is left out
    assert contrast_table(results[:3], [("b", "a")], (("val_loss", "val loss"),), "Pairs") == ""
