"""Study run specs (frozen dataclasses) and the runner's use of them: exact JSON round trip,
settings apart from execution fields, stale results refused, recorded runs skipped."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mossnet.studies import runner
from mossnet.studies.specs import LMRunSpec, MQARRunSpec, RunSpec


def _lm(**changes) -> LMRunSpec:
    base = dict(name="lm/a-s0", result="/tmp/r.json", train_dir="/tmp/t", data="/tmp/d", study="lm", variant="a",
                family="mossnet", trainer_arch="mossnet", model={"d_model": 32, "A_init_range": [1.0, 16.0]},
                seed=0, lr=3e-3, seq_len=32, batch_size=4, max_steps=2, warmup_steps=1, eval_interval=1,
                eval_tokens=64)
    return LMRunSpec(**{**base, **changes})


def test_json_round_trip_is_exact_for_both_kinds(tmp_path):
    mqar = MQARRunSpec(name="mqar/x", result=str(tmp_path / "x.json"), arch="attention", d_model=16, lr=1e-3, seed=2,
                       model={"dropout": 0.1}, mixture="zoology", stop_slice="128x8", stop_accuracy=0.99)
    for spec in (_lm(), mqar):
        text = json.dumps(spec.to_json())  # what the runner writes for a child process
        back = RunSpec.from_json(json.loads(text))
        assert back == spec and type(back) is type(spec)
        assert back.to_json()["kind"] == spec.kind


def test_specs_are_frozen_and_refuse_unknown_fields():
    spec = _lm()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0
    with pytest.raises(ValueError, match="no field"):
        RunSpec.from_json({**spec.to_json(), "lrr": 1.0})
    with pytest.raises(ValueError, match="unknown run kind"):
        RunSpec.from_json({**spec.to_json(), "kind": "vision"})


def test_settings_leave_out_where_and_how_fast():
    a, b = _lm(), _lm(device="cuda", threads=8, cuda_graph=True, result="/elsewhere.json", label="x", data="/d2")
    assert a.settings() == b.settings()
    assert _lm(lr=1e-2).settings() != a.settings()
    assert {"kind", "lr", "seed", "model", "max_steps", "probes"} <= set(a.settings())


def test_a_stale_or_older_result_is_refused(tmp_path):
    spec = _lm(result=str(tmp_path / "r.json"))
    runner.write_json(spec.result, {**spec.settings(), "val_loss": 4.0})
    runner.check_existing([spec])  # the same settings: reused
    with pytest.raises(ValueError, match="max_steps: 2 there, 3 now"):
        runner.check_existing([spec.replace(max_steps=3)])
    older = {k: v for k, v in spec.settings().items() if k != "probes"}  # made before `probes` existed
    runner.write_json(spec.result, older)
    with pytest.raises(ValueError, match="probes: not recorded there"):
        runner.check_existing([spec])


def test_recorded_runs_are_skipped(tmp_path, monkeypatch):
    done = _lm(name="lm/done", result=str(tmp_path / "done.json"))
    todo = _lm(name="lm/todo", result=str(tmp_path / "todo.json"))
    runner.write_json(done.result, done.settings())
    ran = []
    monkeypatch.setattr(runner, "execute", lambda spec: ran.append(spec.name))
    messages = []
    assert runner.run_pending([done, todo], jobs=1, say=messages.append) == []
    assert ran == ["lm/todo"] and "1 of 2 runs already have a result: skipped" in messages[0]


def test_the_child_entry_point_runs_a_spec_json(tmp_path):
    """``python -m mossnet.studies.runner SPEC.json`` (the isolated job) rebuilds the spec and runs it."""
    spec = MQARRunSpec(name="mqar/tiny", result=str(tmp_path / "run" / "result.json"), arch="llama", d_model=16,
                       lr=1e-3, seed=0, seq_len=12, num_pairs=2, vocab_size=16, steps=2, batch_size=4, n_layers=1,
                       eval_examples=4, device="cpu", threads=1)
    path = tmp_path / "spec.json"
    runner.write_json(path, spec.to_json())
    assert runner.main([str(path)]) == 0
    result = runner.read_json(spec.result)
    assert runner.mismatches(spec, result) == [] and result["eval_queries"] == 8


def test_the_module_example_holds():
    import doctest

    from mossnet.studies import specs

    assert doctest.testmod(specs).failed == 0
