"""The preset table in the README is the real parameter count."""

import re
from pathlib import Path

import pytest

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.models.parameter_count import parameter_counts

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_preset_rows() -> dict[str, tuple[float, float]]:
    """{preset: (total M, active M)} from the README's preset table."""
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\|\s*`(tiny|small|base)`\s*\|\s*([\d.]+)M\s*\|\s*([\d.]+)M\s*\|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_readme_table_matches_numel(preset):
    rows = readme_preset_rows()
    assert preset in rows, f"README preset table has no row for {preset}"
    counts = parameter_counts(MossNetForCausalLM(MossNetConfig.from_preset(preset)))
    total_m, active_m = rows[preset]
    assert abs(counts["total"] / 1e6 - total_m) < 0.05, counts
    assert abs(counts["active"] / 1e6 - active_m) < 0.05, counts


def test_preset_sizes_match_their_promises():
    small = parameter_counts(MossNetForCausalLM(MossNetConfig.from_preset("small")))
    base = parameter_counts(MossNetForCausalLM(MossNetConfig.from_preset("base")))
    assert 25e6 <= small["active"] <= 35e6  # "~30M active"
    assert 120e6 <= base["total"] <= 140e6  # "~130M total"
    assert MossNetConfig.from_preset("base").vocab_size == 49152  # SmolLM2's vocabulary


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        MossNetConfig.from_preset("huge")


def test_active_counts_only_routed_experts():
    cfg = MossNetConfig.from_preset("tiny", mlp_experts=1, mlp_top_k=1)
    counts = parameter_counts(MossNetForCausalLM(cfg))
    dense = parameter_counts(MossNetForCausalLM(MossNetConfig.from_preset("tiny", ssm_top_k=4, mlp_experts=1, mlp_top_k=1)))
    # With k = E every expert is active.
    assert dense["active"] == dense["total"]
    assert counts["active"] < counts["total"]
