"""``scripts/gpu_studies.sh``, the GPU sittings' one command, checked on the CPU with a stand-in
``python3`` on the PATH that records each ``mossnet compare`` it is asked for (the real runs need
a card). What is checked is the orchestration: which studies run with which arguments, the retry
of a failed study, and the clear refusal without data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_studies.sh"

# Records its arguments, one call a line, and leaves a recorded run behind as a study would;
# the lm study fails on its first call only.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
out="${@: -1}"
[ "$out" = --report-only ] && exit 0
case "$out" in
  */lm) mkdir -p "$out/runs/llama-s0" && echo '{}' > "$out/runs/llama-s0/result.json"
        if [ ! -f "$CALLS.failed" ]; then touch "$CALLS.failed"; exit 1; fi ;;
  */lm_mamba2) mkdir -p "$out/runs/mamba2-s0" && echo '{}' > "$out/runs/mamba2-s0/result.json" ;;
esac
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_script(tmp_path: Path, *args: str, data: str | None = "prepared") -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(calls), OUT=str(tmp_path / "out"),
               STUDIES=str(tmp_path / "studies"), STUDY_TIMEOUT="120")
    env.pop("DATA", None)
    if data is not None:
        env["DATA"] = data
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)
    return done, (calls.read_text().splitlines() if calls.exists() else [])


def test_baselines_runs_both_studies_at_once_and_retries_the_failed_one(tmp_path):
    done, calls = run_script(tmp_path, "baselines")
    assert done.returncode == 0, done.stdout + done.stderr
    lm = [c for c in calls if c.endswith(f"--out {tmp_path}/studies/lm")]
    mamba2 = [c for c in calls if c.endswith(f"--out {tmp_path}/studies/lm_mamba2")]
    assert len(lm) == 2 and len(mamba2) == 1  # the lm study failed once and was tried again
    assert "--archs mossnet,single_head,llama " in lm[0] and "--jobs 12 --cuda-graph" in lm[0]
    assert "--archs mamba2 " in mamba2[0] and "--jobs 4 --threads 1 " in mamba2[0]
    assert "--cuda-graph" not in mamba2[0]  # transformers' Mamba-2 is not capturable
    for call in lm + mamba2:
        assert "--data prepared " in call and "--lr-sweep 1e-3,1e-2 --sweep-seeds 1" in call
    assert "lm: exit 1; trying the failed runs again (1 of 2)" in done.stdout
    assert (tmp_path / "out" / "lm.log.1").exists()  # the failed attempt's log is kept
    # then one report over both studies' runs, linked into one directory (compare makes the
    # directory with an empty report first: it writes only into directories it made)
    joint = [c for c in calls if c.endswith(f"--out {tmp_path}/studies/baselines --report-only")]
    assert len(joint) == 2 and all("--archs mossnet,single_head,llama,mamba2 " in c for c in joint)
    runs = tmp_path / "studies" / "baselines" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["llama-s0", "mamba2-s0"]
    assert (tmp_path / "out" / "baselines.tgz").exists()


def test_a_data_study_without_data_is_refused(tmp_path):
    done, calls = run_script(tmp_path, "baselines", data=None)
    assert done.returncode == 2 and calls == []
    assert "baselines needs DATA=<prepared corpus>" in done.stdout


def test_an_unknown_study_is_refused(tmp_path):
    done, calls = run_script(tmp_path, "nonesuch")
    assert done.returncode == 2 and calls == []
    assert "unknown study nonesuch" in done.stdout
