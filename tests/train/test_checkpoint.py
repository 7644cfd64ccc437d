"""Checkpoints: pickle-free trainer state, atomic replacement, clear errors on bad checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

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
    def write_model(tmp: Path):
        (tmp / "config.json").write_text(json.dumps({"step": step}))
        if fail:
            raise OSError("disk full (simulated)")

    ckpt.save_checkpoint(path, rank=0, barrier=lambda: None, write_model=write_model, state={"step": step},
                         optimizer_state={"optimizer": {"state": {}, "param_groups": []}, "param_names": []},
                         rank_state={"data": {"step": step}, "rng": ckpt.capture_rng()})


def test_crash_mid_save_keeps_previous(tmp_path):
    out = tmp_path / "run"
    _save(out, 1)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(OSError, match="disk full"):
        _save(out, 2, fail=True)
    assert ckpt.read_trainer_state(out)["step"] == 1
    assert json.loads((out / "config.json").read_text()) == {"step": 1}
    assert not list(tmp_path.glob(".run.tmp*"))  # the partial save was cleaned up
    _save(out, 3)
    assert ckpt.read_trainer_state(out)["step"] == 3
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'  # logs carried into the new checkpoint


def test_crash_between_renames_recovers(tmp_path):
    out = tmp_path / "run"
    _save(out, 1)
    out.rename(tmp_path / "run.old")  # as if the process died right after moving the old one aside
    assert ckpt.read_trainer_state(out)["step"] == 1  # recover() puts it back
    assert not (tmp_path / "run.old").exists()


def test_leftover_tmp_is_ignored_and_replaced(tmp_path):
    out = tmp_path / "run"
    _save(out, 1)
    stale = tmp_path / ".run.tmp"
    stale.mkdir()
    (stale / "junk").write_text("x")
    _save(out, 2)
    assert ckpt.read_trainer_state(out)["step"] == 2 and not stale.exists()


def test_incomplete_and_corrupt_errors(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.read_trainer_state(out)
    _save(out, 1)
    f = out / ckpt.STATE_DIR / "rank0.safetensors"
    f.write_bytes(f.read_bytes()[:-10])  # truncated
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt: trainer_state/rank0.safetensors does not match"):
        ckpt.read_trainer_state(out)
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.read_rank_state(out, 0)
    (out / ckpt.STATE_DIR / "state.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.read_trainer_state(out)
    (out / ckpt.STATE_DIR / "state.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no trainer state"):
        ckpt.read_trainer_state(out)


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
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "mossnet" and len(tok) == model.config.vocab_size
    state = ckpt.read_trainer_state(out)
    assert state["step"] == 2 and state["world_size"] == 1
    files = {p.name for p in (out / ckpt.STATE_DIR).iterdir()}
    assert files == {"state.json", "optimizer.json", "optimizer.safetensors", "rank0.json", "rank0.safetensors"}
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))


def test_resume_corrupt_weights_fails_clearly(trained, make_cfg):
    out = Path(trained.out)
    w = out / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors does not match the checksum"):
        train(make_cfg("again", resume=str(out), max_steps=3))


def test_resume_mismatched_model_fails_clearly(trained, make_cfg):
    with pytest.raises(ckpt.CheckpointError, match=r"d_model=32 but this run asks for model.d_model=48"):
        train(make_cfg("again", resume=trained.out, max_steps=3, model={"d_model": 48}))
    with pytest.raises(ckpt.CheckpointError, match="holds a 'mossnet' model but --arch is 'llama'"):
        train(make_cfg("again", resume=trained.out, max_steps=3, arch="llama"))


def test_resume_weights_of_other_shape_fail_clearly(trained, make_cfg):
    # a config.json that disagrees with the weights (checksums updated, so only shapes can tell)
    out = Path(trained.out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["mlp_hidden_dim"] = 96
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="config.json does not match the checksum"):
        train(make_cfg("again", resume=str(out), max_steps=3))
    state_file = out / ckpt.STATE_DIR / "state.json"
    state = json.loads(state_file.read_text())
    state["checksums"]["config.json"] = ckpt.sha256(out / "config.json")
    state_file.write_text(json.dumps(state))
    again = make_cfg("again", resume=str(out), max_steps=3)
    again.model = {}  # no model options in this run: the checkpoint's config.json rules
    with pytest.raises(ckpt.CheckpointError, match=r"weight model.layers.0.mlp.\S+ has shape .* in the checkpoint"):
        train(again)
