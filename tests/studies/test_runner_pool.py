"""``run_pending`` with several jobs: each run in its own process with its own log; a run that
fails is reported by name and does not stop the others."""

import sys

from mossnet import isolated_jobs
from mossnet.studies import runner
from mossnet.studies.runner import run_pending, write_json
from mossnet.studies.specs import MQARRunSpec

# Stands in for ``python -m mossnet.studies.runner SPEC`` (whose torch import would cost seconds
# per process): writes the result of a spec named ok*, fails on any other.
FAKE_RUN = """
import json, sys
spec = json.load(open(sys.argv[1]))
print("running", spec["name"])
if not spec["name"].startswith("ok"):
    sys.exit("no such run kind")
json.dump({"name": spec["name"]}, open(spec["result"], "w"))
"""


def test_parallel_runs_fail_alone_and_log_to_their_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(isolated_jobs, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(runner, "python_module_command", lambda module, *argv: [sys.executable, "-c", FAKE_RUN, *argv])
    specs = [MQARRunSpec(name=name, result=str(tmp_path / name / "result.json"), seed=0, lr=1e-3, arch="mossnet",
                         d_model=16) for name in ("earlier", "ok1", "bad", "ok2")]
    write_json(specs[0].result, specs[0].settings())  # finished earlier: skipped
    said = []
    assert run_pending(specs, jobs=2, say=said.append) == ["bad"]
    assert said[0] == "1 of 4 runs already have a result: skipped"
    assert {line.split()[0] for line in said if line.endswith(" s") and "done in" in line} == {"ok1", "ok2"}
    assert any(line.startswith("  bad FAILED (exit 1); see ") for line in said)
    assert (tmp_path / "bad" / "log.txt").read_text() == "running bad\nno such run kind\n"  # stderr too
    assert runner.read_json(tmp_path / "ok2" / "spec.json") == specs[3].to_json()


def test_a_retried_run_keeps_the_log_of_each_earlier_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr(isolated_jobs, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(runner, "python_module_command", lambda module, *argv: [sys.executable, "-c", FAKE_RUN, *argv])
    spec = MQARRunSpec(name="bad", result=str(tmp_path / "bad" / "result.json"), seed=0, lr=1e-3, arch="mossnet",
                       d_model=16)
    for _ in range(3):
        assert run_pending([spec], jobs=2, say=lambda line: None) == ["bad"]
    logs = sorted(p.name for p in (tmp_path / "bad").glob("log*.txt"))
    assert logs == ["log.1.txt", "log.2.txt", "log.txt"]
    assert all(p.read_text() == "running bad\nno such run kind\n" for p in (tmp_path / "bad").glob("log*.txt"))
