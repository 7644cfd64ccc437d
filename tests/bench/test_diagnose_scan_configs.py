"""``benchmarks/diagnose_scan_configs.py``: a faulting variant (and only that one) is asked again
candidate by candidate, and the summary names what faulted. The real child needs a GPU; a stand-in
child that fails for chosen questions checks the orchestration on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnose_scan_configs.py"

# argv: letter, kernel, candidate, batch, seq, steps. Variant C faults when tuned; alone, only
# candidate 1 of "bwd_dx" faults.
FAKE_CHILD = r"""
import sys
letter, kernel, idx = sys.argv[1], sys.argv[2], int(sys.argv[3])
if letter == "C" and kernel in ("-", "bwd_dx") and (kernel == "-" or idx == 1):
    sys.exit("RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered")
print("OK 9.0")
"""


def load_script():
    spec = importlib.util.spec_from_file_location("diagnose_scan_configs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_faulting_variant_is_asked_candidate_by_candidate(tmp_path, monkeypatch, capsys):
    script = load_script()
    monkeypatch.setattr(script, "_CHILD", FAKE_CHILD)
    monkeypatch.setattr(script, "candidates", lambda: [("fwd_h", 0), ("bwd_dx", 0), ("bwd_dx", 1)])
    monkeypatch.setattr(script, "declared_configs", lambda: {"fwd_h": ["a"], "bwd_dx": ["b", "c"]})
    out = tmp_path / "d.json"
    assert script.main(["--variants", "A,C", "--repeats", "2", "--jobs", "2", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["stage"] == "candidates"  # written after each stage; the last one stays
    assert summary["faulty_variants"] == ["C"] and summary["faulty_candidates"] == ["bwd_dx[1]"]
    asked = [(r["variant"], r["kernel"], r["candidate"]) for r in summary["results"]]
    assert asked.count(("A", "-", 0)) == 2 and asked.count(("C", "-", 0)) == 2
    assert sorted(q for q in asked if q[1] != "-") == [("C", "bwd_dx", 0), ("C", "bwd_dx", 1), ("C", "fwd_h", 0)]
    printed = capsys.readouterr().out
    assert "C bwd_dx[1]: FAULT" in printed and "illegal memory access" in printed
