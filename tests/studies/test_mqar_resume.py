"""An MQAR run cut short goes on from its last resume point and ends where the uninterrupted run
ends; a point it cannot use is dropped, and the run starts over."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mossnet.studies import mqar
from mossnet.studies.mqar import execute_mqar, make_specs, resume_steps
from mossnet.studies.runner import execute


class Cut(Exception):
    pass


def spec_for(tmp_path, arch="llama", eval_points=3):
    (spec,) = make_specs(tmp_path, archs=(arch,), widths=(16,), pairs=(2,), lrs=(3e-3,), seq_len=12,
                         vocab_size=16, steps=6, batch_size=4, n_layers=1, eval_examples=8, warmup_steps=2,
                         eval_points=eval_points, device="cpu", threads=1)
    return spec


def cut_after(monkeypatch, calls: int):
    """Make the run's training step raise on its call number ``calls + 1``."""
    build = mqar._train_step

    def counting(*args, **kwargs):
        step = build(*args, **kwargs)
        seen = []

        def wrapped(x, y):
            if len(seen) == calls:
                raise Cut(f"cut after {calls} steps")
            seen.append(1)
            return step(x, y)

        return wrapped

    monkeypatch.setattr(mqar, "_train_step", counting)


def comparable(result):
    return {k: result[k] for k in ("accuracy", "eval_loss", "slices", "accuracy_curve", "train_loss_curve",
                                   "examples_to_90", "diverged", "router_curve")}


def test_resume_steps_follow_the_curve_and_skip_the_last_step(tmp_path):
    assert resume_steps(spec_for(tmp_path)) == [2, 4]
    no_curve = dataclasses.replace(spec_for(tmp_path, eval_points=0), steps=20)
    assert resume_steps(no_curve) == [2, 4, 6, 8, 10, 12, 14, 16, 18]


@pytest.mark.parametrize("arch", ["llama", "mossnet"])
def test_a_cut_run_resumes_and_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, capsys, arch):
    whole = execute_mqar(spec_for(tmp_path / "whole", arch))
    spec = spec_for(tmp_path / "cut", arch)
    with monkeypatch.context() as patch:
        cut_after(patch, 5)  # five steps, then the sixth raises; from the point at step 4, 5 is redone
        with pytest.raises(Cut):
            execute_mqar(spec)
    capsys.readouterr()
    resumed = execute(spec)  # the runner: writes the result, then drops the point
    assert "resumed at step 4" in capsys.readouterr().out
    assert resumed["resumed_at_steps"] == [4] and whole["resumed_at_steps"] == []
    assert comparable(resumed) == comparable(whole)
    if arch == "mossnet":  # it routes (top-2 of 4): one router point per curve point, kept across the cut
        assert [p[0] for p in whole["router_curve"]] == [p[0] for p in whole["accuracy_curve"]]
        assert all(0.0 <= entropy <= 1.0 and 0.0 <= same <= 1.0 for _, entropy, same in whole["router_curve"])
    else:
        assert whole["router_curve"] == []
    run_dir = next((tmp_path / "cut" / "runs").iterdir())
    assert (run_dir / "result.json").is_file() and not (run_dir / "resume").exists()


def test_a_point_of_other_settings_or_a_corrupt_one_is_dropped(tmp_path, monkeypatch, capsys):
    spec = spec_for(tmp_path)
    with monkeypatch.context() as patch:
        cut_after(patch, 3)
        with pytest.raises(Cut):
            execute_mqar(spec)
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "resume" / "state.safetensors").is_file()
    assert mqar.load_resume_point(spec)["step"] == 2

    other = dataclasses.replace(spec, warmup_steps=3)  # same run directory, another schedule
    assert mqar.load_resume_point(other) is None
    assert "other settings; starting over" in capsys.readouterr().out
    assert not (run_dir / "resume").exists()

    with monkeypatch.context() as patch:
        cut_after(patch, 3)
        with pytest.raises(Cut):
            execute_mqar(spec)
    st = run_dir / "resume" / "state.safetensors"
    st.write_bytes(st.read_bytes()[:40])  # truncated
    capsys.readouterr()
    result = execute_mqar(spec)  # starts over instead of failing
    out = capsys.readouterr().out
    assert "cannot be read" in out and "starting over" in out and result["resumed_at_steps"] == []


def test_a_point_that_does_not_fit_the_model_is_dropped(tmp_path, monkeypatch, capsys):
    """Same settings, other parameters (the model code changed between two calls): the run starts
    over from its freshly built model instead of failing at every retry."""
    spec = spec_for(tmp_path)
    with monkeypatch.context() as patch:
        cut_after(patch, 3)
        with pytest.raises(Cut):
            execute_mqar(spec)
    point = mqar.load_resume_point(spec)
    point["model"] = {k: v[..., :1] for k, v in point["model"].items()}
    monkeypatch.setattr(mqar, "load_resume_point", lambda s: point)
    capsys.readouterr()
    result = execute_mqar(spec)
    assert "does not fit this run" in capsys.readouterr().out and result["resumed_at_steps"] == []
    assert comparable(result) == comparable(execute_mqar(spec_for(tmp_path / "whole")))


@pytest.mark.gpu
def test_a_run_replayed_from_a_cuda_graph_resumes(tmp_path, monkeypatch):
    """The captured step is built after the point is loaded: it takes over AdamW's state as it
    stands (moved to the device, capturable) and trains on like the uninterrupted run."""
    import numpy as np

    def cuda_spec(root):
        (spec,) = make_specs(root, archs=("mossnet",), widths=(32,), pairs=(4,), lrs=(3e-3,), seq_len=32,
                             vocab_size=32, steps=8, batch_size=16, n_layers=2, eval_examples=32, warmup_steps=2,
                             eval_points=4, device="cuda", dtype="fp32", cuda_graph=True)
        return spec

    whole = execute_mqar(cuda_spec(tmp_path / "whole"))
    spec = cuda_spec(tmp_path / "cut")
    with monkeypatch.context() as patch:
        cut_after(patch, 5)  # points at steps 2, 4, 6: resumed at 4
        with pytest.raises(Cut):
            execute_mqar(spec)
    resumed = execute_mqar(spec)
    assert resumed["resumed_at_steps"] == [4] and resumed["cuda_graph"] is True
    losses = lambda r: [loss for _, loss in r["train_loss_curve"]]  # noqa: E731
    np.testing.assert_allclose(losses(resumed), losses(whole), rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose([a for _, a in resumed["accuracy_curve"]], [a for _, a in whole["accuracy_curve"]],
                               atol=0.02)


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_a_study_killed_mid_run_is_finished_by_the_same_command(tmp_path):
    """A GPU sitting's pattern: `mossnet compare` gets SIGTERM at a call's limit. Its runs stop
    with it (no orphans), and the same command run again resumes each cut run from its point."""
    out = tmp_path / "mqar"
    argv = [sys.executable, "-m", "mossnet.cli.main", "compare", "--study", "mqar", "--out", str(out),
            "--archs", "llama", "--widths", "16", "--pairs", "2", "--lrs", "1e-3,3e-3", "--mqar-seq-len", "12",
            "--mqar-vocab", "16", "--mqar-steps", "600", "--mqar-batch-size", "4", "--mqar-layers", "1",
            "--mqar-eval-examples", "8", "--mqar-eval-points", "30", "--jobs", "2", "--threads", "1",
            "--device", "cpu"]
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    study = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("runs/*/resume/state.json"))) < 2:
            assert study.poll() is None, "the study ended before both runs saved a point"
            assert time.monotonic() < deadline, "no resume points within 120 s"
            time.sleep(0.1)
        study.send_signal(signal.SIGTERM)  # the parent only: it must stop its runs itself
        assert study.wait(timeout=30) == 128 + signal.SIGTERM
        time.sleep(0.5)
        assert _processes_mentioning(str(out)) == [], "runs left running after their study was killed"
    finally:
        if study.poll() is None:
            study.kill()
        for pid in _processes_mentioning(str(out)):
            os.kill(pid, signal.SIGKILL)
    cut = [p.parent.parent.name for p in out.glob("runs/*/resume/state.json")]
    assert len(cut) == 2 and not list(out.glob("runs/*/result.json"))

    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in cut:
        run = out / "runs" / name
        result = json.loads((run / "result.json").read_text())
        assert len(result["resumed_at_steps"]) == 1 and 0 < result["resumed_at_steps"][0] < 600
        assert "resumed at step" in (run / "log.txt").read_text()
        assert not (run / "resume").exists()
        assert len(result["accuracy_curve"]) == 30  # the curve of the cut segment and the resumed one, whole
