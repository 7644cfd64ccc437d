"""``mossnet train`` on every bad input we know of: one line naming the problem, a non-zero exit,
no traceback, and no checkpoint that looks complete. Plus a real full disk (a file-size limit)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mossnet.cli.main import main

_spec = importlib.util.spec_from_file_location("train_helpers", Path(__file__).parents[1] / "train" / "trainer_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

MODEL = [f"model.{k}={v}" for k, v in helpers.TINY_MODEL.items()]
COMMON = ["--seq-len", "32", "--batch-size", "4", "--no-progress", "--no-tensorboard", "sample_tokens=0",
          "plot=false", "num_threads=1", "eval_tokens=256"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return helpers.make_data_dir(tmp_path_factory.mktemp("bad") / "data")


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", "--data", str(data_dir), "--out", str(out), "--max-steps", "1", *COMMON, *MODEL]) == 0
    return out


def _expect_one_line(capsys, argv, needle, code=2):
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse refused an option value: usage line + one error line
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == code, (rc, err)
    assert "Traceback" not in err
    assert needle in err, err
    return err


def _state(run: Path) -> dict:
    return json.loads((run / "trainer" / "state.json").read_text())


# (argv after `train --data D --out O`, needle); argparse errors exit 2 before any work
BAD_FLAGS = [
    (["--seed", "-1"], "--seed: must be in [0, 2**32)"),
    (["--lr", "nan"], "--lr: expected a finite number"),
    (["--max-steps", "0"], "--max-steps: must be >= 1"),
    (["--batch-size", "abc"], "--batch-size: expected an integer"),
    (["eval_tokens=1"], "eval_tokens must be 0 (the whole split) or more than seq_len"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device"),
    (["seq_len=true"], "seq_len: expected int"),
    (["lr=inf"], "lr: expected float"),
    (["model.ssm_expert=8"], "model.ssm_expert is not a field of the mossnet model config (did you mean model.ssm_experts?)"),
    (["model.scan_impl=bogus"], "scan_impl must be one of"),
    (["model.ssm_top_k=9"], "ssm_top_k (9) must be <= ssm_experts"),
    (["seed=-1"], "seed must be in [0, 2**32)"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
]


@pytest.mark.parametrize("extra, needle", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_options(data_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    _expect_one_line(capsys, ["train", "--data", str(data_dir), "--out", str(out), "--max-steps", "1",
                              *COMMON, *MODEL, *extra], needle)
    assert not (out / "trainer").exists()  # nothing that looks like a checkpoint


def test_bad_data(data_dir, tmp_path, capsys):
    import shutil

    _expect_one_line(capsys, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *COMMON],
                     "missing")
    short = tmp_path / "short"
    shutil.copytree(data_dir, short)
    _expect_one_line(capsys, ["train", "--data", str(short), "--out", str(tmp_path / "o2"), "--max-steps", "1",
                              *COMMON, *MODEL, "--seq-len", "100000", "eval_tokens=0"], "fewer than one sequence")
    manifest = json.loads((short / "manifest.json").read_text())
    manifest["vocab_size"] = "many"
    (short / "manifest.json").write_text(json.dumps(manifest))
    err = _expect_one_line(capsys, ["train", "--data", str(short), "--out", str(tmp_path / "o3"), *COMMON, *MODEL],
                           "vocab_size")
    assert "manifest" in err


def test_bad_checkpoints(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    base = ["train", "--resume", str(run), "--max-steps", "2", "--no-progress"]
    w = run / "model" / "model.safetensors"
    original = w.read_bytes()
    w.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])  # same size, one byte
    _expect_one_line(capsys, base, "model.safetensors does not match the SHA-256")
    w.write_bytes(original[: len(original) // 2])  # truncated
    _expect_one_line(capsys, base, "model.safetensors does not match the SHA-256")
    w.write_bytes(original)
    state = _state(run)
    (run / "trainer" / "state.json").write_text(json.dumps({**state, "step": "three"}))
    _expect_one_line(capsys, base, "field 'step' has the invalid value")
    (run / "trainer" / "state.json").write_text(json.dumps(state))
    (run / "model" / "config.json").unlink()
    _expect_one_line(capsys, base, "config.json")
    _expect_one_line(capsys, ["train", "--resume", str(tmp_path / "nope"), "--no-progress"], "does not exist")


def test_out_is_a_file_or_holds_user_files(data_dir, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    _expect_one_line(capsys, ["train", "--data", str(data_dir), "--out", str(f), *COMMON, *MODEL], "is a file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "tokenizer.json").write_text("user's")
    _expect_one_line(capsys, ["train", "--data", str(data_dir), "--out", str(mine), *COMMON, *MODEL],
                     "not empty and was not written by this MossNet command")
    _expect_one_line(capsys, ["train", "--data", str(data_dir), "--out", str(data_dir), *COMMON, *MODEL],
                     "is the --data directory")
    assert (mine / "tokenizer.json").read_text() == "user's"


def test_debug_env_shows_the_traceback(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOSSNET_DEBUG", "1")
    from mossnet.errors import MossNetError

    with pytest.raises(MossNetError):
        main(["train", "--data", str(data_dir), "--out", str(tmp_path / "o"), *COMMON, "model.ssm_expert=8"])


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from mossnet.cli.main import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    sys.exit(main(sys.argv[2:]))
""")


def test_disk_full_during_save_keeps_the_previous_checkpoint(trained, tmp_path):
    """A real failed write (a file-size limit below the optimizer file's size, in a child process):
    one line, exit 1, and the previous checkpoint verifies and resumes."""
    import shutil

    run = tmp_path / "full"
    shutil.copytree(trained, run)
    before = {p.name: p.read_bytes() for p in (run / "trainer").iterdir()}
    limit = (run / "trainer" / "optimizer.safetensors").stat().st_size // 2
    argv = ["train", "--resume", str(run), "--max-steps", "2", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(limit), *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "saving the checkpoint of step 2" in proc.stderr and "the checkpoint of step 1 is intact" in proc.stderr
    assert {p.name: p.read_bytes() for p in (run / "trainer").iterdir()} == before
    assert not (run / ".checkpoint.mossnet-tmp").exists()
    assert main(argv) == 0 and _state(run)["step"] == 2  # with room again, it resumes and saves
