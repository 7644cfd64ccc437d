"""The preset table in the README is the real parameter count (models built on the meta
device: shapes only, no memory or initialisation, so even the ~1B preset counts in a moment)."""

import re
from pathlib import Path

import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.models.parameter_count import parameter_counts

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_preset_rows() -> dict[str, tuple[float, float]]:
    """{preset: (total M, active M)} from the README's preset table."""
    rows = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\|\s*`(tiny|small|base|large)`\s*\|\s*([\d.]+)M\s*\|\s*([\d.]+)M\s*\|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


def counts_on_meta(preset: str) -> dict[str, int]:
    with torch.device("meta"):
        return parameter_counts(MossNetForCausalLM(MossNetConfig.from_preset(preset)))


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "large"])
def test_readme_table_matches_numel(preset):
    rows = readme_preset_rows()
    assert preset in rows, f"README preset table has no row for {preset}"
    counts = counts_on_meta(preset)
    total_m, active_m = rows[preset]
    assert abs(counts["total"] / 1e6 - total_m) < 0.05, counts
    assert abs(counts["active"] / 1e6 - active_m) < 0.05, counts


def test_preset_sizes_match_their_promises():
    small, base, large = (counts_on_meta(name) for name in ("small", "base", "large"))
    assert 25e6 <= small["active"] <= 35e6  # "~30M active"
    assert 120e6 <= base["total"] <= 140e6  # "~130M total"
    assert 0.95e9 <= large["total"] <= 1.1e9  # "~1B total"
    assert large["active"] < large["total"] / 3
    assert MossNetConfig.from_preset("base").vocab_size == 49152  # SmolLM2's vocabulary
    assert MossNetConfig.from_preset("large").vocab_size == 49152


def test_meta_count_equals_a_real_model():
    """Counting on the meta device is the same count as on a real (allocated) model."""
    assert counts_on_meta("small") == parameter_counts(MossNetForCausalLM(MossNetConfig.from_preset("small")))


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
