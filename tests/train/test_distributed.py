"""Data parallelism on CPU: 2 gloo processes (torchrun) == 1 process accumulating 2 micro-batches.

Each step's global batch is split into world_size * grad_accum micro-batches the same way for any
layout (see ``MicroBatches``), and router statistics are per micro-batch, so the two runs see the
same micro-batches and must agree on every step's loss and gradient norm and on the final weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer_helpers import TINY_MODEL

from mossnet.cli.main import main

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data: Path, out: Path, *extra: str, sample_tokens: int = 0) -> list[str]:
    model = [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
    return ["train", "--data", str(data), "--out", str(out), "--seq-len", "32", "--batch-size", "4",
            "--max-steps", str(STEPS), "--log-interval", "1", "--eval-interval", "0", "--ckpt-interval", "2",
            "--no-progress", "--no-tensorboard", "--seed", "0", "--device", "cpu", *extra,
            "warmup_steps=1", f"sample_tokens={sample_tokens}", "plot=false", "num_threads=1", "eval_tokens=256", *model]


def _run(cmd: list[str], timeout: int = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"


def _train_records(out: Path) -> list[dict]:
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_gradient_accumulation(data_dir, tmp_path, mode):
    single, multi = tmp_path / "single", tmp_path / mode
    assert main(_args(data_dir, single, "--grad-accum", "2")) == 0  # in this process: one start-up less
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()), "-m", "mossnet.cli.main"]
    # the distributed run also writes its end-of-training sample (under FSDP2 from the gathered checkpoint)
    _run([*launcher, *_args(data_dir, multi, *(["--fsdp"] if mode == "fsdp" else []), sample_tokens=4)])

    a, b = _train_records(single), _train_records(multi)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b):
        for key in ("loss", "ce", "aux", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)
        assert rb["tokens"] == ra["tokens"]
        # router load is summed over micro-batches and ranks: the same counts
        for name, load in ra["router_load"].items():
            assert rb["router_load"][name] == pytest.approx(load, abs=1e-6)
    wa, wb = load_file(str(single / "model" / "model.safetensors")), load_file(str(multi / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    state = json.loads((multi / "trainer" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == STEPS
    assert {"rank0.json", "rank1.json"} <= {p.name for p in (multi / "trainer").iterdir()}


def test_two_processes_resume_a_checkpoint_left_mid_save(data_dir, tmp_path):
    """Under DDP, rank 0 finishes an interrupted save before rank 1 reads the checkpoint: a
    complete save folder left by a crash is rolled forward, and both ranks resume from it."""
    import shutil

    from mossnet.rundir import atomic

    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()), "-m", "mossnet.cli.main"]
    _run([*launcher, *_args(data_dir, out)])
    # as if a save had crashed after marking its folder complete, before any rename
    tmp = out / atomic.TMP
    tmp.mkdir()
    (tmp / atomic.SAVE_MARK).write_text("{}")
    shutil.copytree(out / "model", tmp / "model")
    shutil.copytree(out / "trainer", tmp / "trainer")
    (tmp / atomic.COMPLETE).write_text("model trainer\n")
    launcher[launcher.index("--master_port") + 1] = str(_free_port())
    _run([*launcher, "train", "--resume", str(out), "--max-steps", str(STEPS + 1), "--no-progress", "--device", "cpu"])
    assert not tmp.exists()
    assert json.loads((out / "trainer" / "state.json").read_text())["step"] == STEPS + 1
