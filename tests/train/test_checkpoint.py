"""Checkpoints: pickle-free trainer state, atomic replacement, clear errors on bad checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mossnet.rundir import LOGS, MODEL, TRAINER, atomic
from mossnet.rundir.integrity import sha256
from mossnet.train import checkpoint as ckpt
from mossnet.train.loop import train


def test_tree_roundtrip_without_pickle(tmp_path):
    tree = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)},
                      7: {"m": torch.arange(4, dtype=torch.int64)}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 7], "name": "decay",
                              "foreach": None, "inf": math.inf}],
            "rng": np.arange(5, dtype=np.uint32), "dtype": torch.bfloat16}
    ckpt.dump_tree(tree, tmp_path / "x")
    assert json.loads((tmp_path / "x.json").read_text())  # structure is plain JSON
    back = ckpt.load_tree(tmp_path / "x")
    assert set(back["state"]) == {0, 7}  # integer keys survive
    assert torch.equal(back["state"][0]["exp_avg"], tree["state"][0]["exp_avg"])
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["param_groups"][0]["inf"] == math.inf and back["param_groups"][0]["foreach"] is None
    assert np.array_equal(back["rng"], tree["rng"]) and back["dtype"] is torch.bfloat16


def test_rng_roundtrip():
    import random

    state = ckpt.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert state["torch"].dtype == torch.uint8


def _save(path: Path, step: int, fail: bool = False):
    def write_model(model_dir: Path):
        (model_dir / "config.json").write_text(json.dumps({"step": step}))
        (model_dir / "model.safetensors").write_bytes(b"weights of step %d" % step)
        if fail:
            raise OSError("disk full (simulated)")

    ckpt.save_checkpoint(path, rank=0, barrier=lambda: None, write_model=write_model, state={"step": step},
                         optimizer_state={"optimizer": {"state": {}, "param_groups": []}, "param_names": []},
                         rank_state={"data": {"step": step}, "rng": ckpt.capture_rng()}, announce=lambda _: None)


def _step_of(out: Path) -> int:
    state = ckpt.read_trainer_state(out)
    assert json.loads((out / MODEL / "config.json").read_text()) == {"step": state["step"]}  # a consistent pair
    return state["step"]


def test_failed_save_keeps_previous_and_user_files(tmp_path):
    out = tmp_path / "run"
    _save(out, 1)
    (out / LOGS).mkdir()
    (out / LOGS / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="disk full"):
        _save(out, 2, fail=True)
    assert _step_of(out) == 1
    assert not (out / atomic.TMP).exists()  # the partial save was cleaned up
    _save(out, 3)
    assert _step_of(out) == 3
    assert (out / LOGS / "metrics.jsonl").read_text() == '{"step": 1}\n'  # logs are never replaced
    assert (out / "notes.txt").read_text() == "mine"  # nor anything else that is not ours
    assert sorted(p.name for p in out.iterdir()) == ["logs", "model", "notes.txt", "trainer"]


class _Crash(Exception):
    pass


def _save_dying_at(out: Path, step: int, crash_at: int, monkeypatch, functions) -> None:
    """``_save(out, step)``, the process "dying" (an exception) at the ``crash_at``-th call, counted
    together, of the (owner, name) ``functions``; they are put back before it returns."""
    calls = {"n": 0}

    def counting(fn):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise _Crash
            return fn(*args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:
        for owner, name in functions:
            patch.setattr(owner, name, counting(getattr(owner, name)))
        try:
            _save(out, step)
        except _Crash:
            pass


@pytest.mark.parametrize("crash_at", range(1, 8))
def test_kill_at_every_rename_leaves_one_whole_checkpoint(tmp_path, monkeypatch, crash_at):
    """Fault injection: the process dies before the n-th rename / removal of a commit (all of
    them come after the save was complete), so the next reader finishes the save: it sees step
    2, whole, and no leftovers."""
    out = tmp_path / "run"
    _save(out, 1)
    _save_dying_at(out, 2, crash_at, monkeypatch, [(atomic.os, "replace"), (atomic.shutil, "rmtree")])
    assert _step_of(out) == 2
    leftovers = [p.name for p in out.iterdir() if "mossnet" in p.name]
    assert leftovers == [], leftovers
    _save(out, 3)
    assert _step_of(out) == 3


@pytest.mark.parametrize("crash_at", range(1, 20))
def test_kill_at_any_removal_or_rename_leaves_a_folder_the_next_save_recovers(tmp_path, monkeypatch, crash_at):
    """Fault injection finer than the one above: the n-th removal of any file or folder, or
    rename, of a save dies, the save folder's own clean-up included. Whatever that leaves, the
    next reader sees one whole checkpoint (the old or the new), and the next save works and
    leaves nothing behind (a save folder that lost its mark but kept files would block every
    later save; a save makes 17 such calls)."""
    out = tmp_path / "run"
    _save(out, 1)
    # os.unlink / os.rmdir are what shutil.rmtree and Path.unlink / rmdir call: a crash can land
    # in the middle of a folder's removal
    _save_dying_at(out, 2, crash_at, monkeypatch, [(atomic.os, name) for name in ("replace", "unlink", "rmdir")])
    assert _step_of(out) in (1, 2)
    _save(out, 3)
    assert _step_of(out) == 3
    leftovers = [p.name for p in out.iterdir() if "mossnet" in p.name]
    assert leftovers == [], leftovers


def test_an_empty_save_folder_is_removed(tmp_path):
    """A save killed between creating its folder and marking it leaves an empty folder."""
    out = tmp_path / "run"
    _save(out, 1)
    (out / atomic.TMP).mkdir()
    _save(out, 2)
    assert _step_of(out) == 2 and not (out / atomic.TMP).exists()


def test_kill_before_the_save_is_complete_keeps_previous(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _save(out, 1)

    def die(path):
        raise _Crash

    monkeypatch.setattr(atomic, "fsync_tree", die)  # dies while flushing the new files
    with pytest.raises(_Crash):
        _save(out, 2)
    monkeypatch.undo()
    assert _step_of(out) == 1 and not (out / atomic.TMP).exists()


def test_incomplete_tmp_is_removed_and_foreign_tmp_kept(tmp_path):
    out = tmp_path / "run"
    _save(out, 1)
    stale = out / atomic.TMP
    stale.mkdir()
    (stale / atomic.SAVE_MARK).write_text("{}")
    (stale / "junk").write_text("x")
    messages = []
    atomic.recover(out, messages.append)
    assert not stale.exists() and "removing an unfinished checkpoint save" in messages[0]
    stale.mkdir()  # no save mark: not ours, never removed
    (stale / "theirs").write_text("x")
    atomic.recover(out, messages.append)
    assert (stale / "theirs").exists() and "not a MossNet save folder" in messages[-1]


def test_incomplete_and_corrupt_errors(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.read_trainer_state(out)
    _save(out, 1)
    f = out / TRAINER / "rank0.safetensors"
    f.write_bytes(f.read_bytes()[:-10])  # truncated
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt: trainer/rank0.safetensors does not match"):
        ckpt.read_trainer_state(out)
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.read_rank_state(out, 0)
    state = json.loads((out / TRAINER / "state.json").read_text())
    for field, value in (("step", "seven"), ("tokens_seen", -1), ("checksums", [])):
        (out / TRAINER / "state.json").write_text(json.dumps({**state, field: value}))
        with pytest.raises(ckpt.CheckpointError, match=f"field '{field}' has the invalid value"):
            ckpt.read_trainer_state(out)
    (out / TRAINER / "state.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.read_trainer_state(out)
    (out / TRAINER / "state.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no trainer state"):
        ckpt.read_trainer_state(out)


def test_model_checksum_is_checked_on_resume(tmp_path):
    out = tmp_path / "run"
    _save(out, 1)
    w = out / MODEL / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"X")  # same size, one byte changed
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors does not match the SHA-256"):
        ckpt.read_trainer_state(out)


def test_legacy_flat_checkpoint_is_refused_in_one_line(tmp_path):
    old = tmp_path / "old"
    (old / "trainer_state").mkdir(parents=True)
    (old / "trainer_state" / "state.json").write_text('{"step": 3}')
    (old / "config.json").write_text("{}")
    with pytest.raises(ckpt.CheckpointError, match="older MossNet layout.*--init-from"):
        ckpt.read_trainer_state(old)


# ---------------------------------------------------------------- with the real trainer


@pytest.fixture
def trained(make_cfg):
    cfg = make_cfg("base", max_steps=2)
    train(cfg)
    return cfg


def test_checkpoint_is_a_hf_directory(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import mossnet.models.mossnet  # noqa: F401  (registers the Auto classes)

    out = Path(trained.out)
    model = AutoModelForCausalLM.from_pretrained(out / MODEL)
    tok = AutoTokenizer.from_pretrained(out / MODEL)
    assert model.config.model_type == "mossnet" and len(tok) == model.config.vocab_size
    state = ckpt.read_trainer_state(out)
    assert state["step"] == 2 and state["world_size"] == 1
    files = {p.name for p in (out / TRAINER).iterdir()}
    assert files == {"state.json", "optimizer.json", "optimizer.safetensors", "rank0.json", "rank0.safetensors",
                     "train_config.yaml"}
    assert (out / MODEL / "SHA256SUMS").is_file() and (out / "mossnet-run.json").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))


def test_resume_corrupt_weights_fails_clearly(trained, make_cfg):
    out = Path(trained.out)
    w = out / MODEL / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors does not match the SHA-256"):
        train(make_cfg("again", resume=str(out), max_steps=3))


def test_resume_mismatched_model_fails_clearly(trained, make_cfg):
    with pytest.raises(ckpt.CheckpointError, match=r"d_model=32 but this run asks for model.d_model=48"):
        train(make_cfg("again", resume=trained.out, max_steps=3, model={"d_model": 48}))
    with pytest.raises(ckpt.CheckpointError, match="holds a 'mossnet' model but --arch is 'llama'"):
        train(make_cfg("again", resume=trained.out, max_steps=3, arch="llama"))


def test_resume_weights_of_other_shape_fail_clearly(trained, make_cfg):
    # a config.json that disagrees with the weights (checksums updated, so only shapes can tell)
    out = Path(trained.out)
    cfg = json.loads((out / MODEL / "config.json").read_text())
    cfg["mlp_hidden_dim"] = 96
    (out / MODEL / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="config.json does not match the SHA-256"):
        train(make_cfg("again", resume=str(out), max_steps=3))
    sums = out / MODEL / "SHA256SUMS"
    sums.write_text("".join(line if not line.endswith("  config.json\n") else
                            f"{sha256(out / MODEL / 'config.json')}  config.json\n"
                            for line in sums.read_text().splitlines(keepends=True)))
    again = make_cfg("again", resume=str(out), max_steps=3)
    again.model = {}  # no model options in this run: the checkpoint's config.json rules
    with pytest.raises(ckpt.CheckpointError, match=r"weight model.layers.0.mlp.\S+ has shape .* in the checkpoint"):
        train(again)


def test_other_ranks_wait_until_an_interrupted_save_is_recovered(tmp_path):
    """Under torchrun only rank 0 repairs an interrupted save; the others wait for it instead of
    reading (or repairing) the run directory halfway through its renames."""
    import threading
    import time

    from mossnet.rundir import atomic

    run = tmp_path / "run"
    (run / atomic.TMP).mkdir(parents=True)
    assert atomic.save_in_progress(run)
    with pytest.raises(TimeoutError, match="not recovered within"):
        atomic.wait_until_recovered(run, timeout=0.2, poll=0.05)
    threading.Timer(0.3, lambda: (run / atomic.TMP).rmdir()).start()
    started = time.monotonic()
    atomic.wait_until_recovered(run, timeout=10, poll=0.05)
    assert time.monotonic() - started >= 0.25 and not atomic.save_in_progress(run)
    atomic.old_path(run, "model").mkdir()  # an old part left over counts too
    assert atomic.save_in_progress(run)
