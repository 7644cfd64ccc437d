"""A training run never loses a user's files or a checkpoint: --out ownership, resume identity,
signals in every phase (tests of issue-level guarantees in docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from mossnet.cli.main import main
from mossnet.errors import ConfigError, OutputDirError
from mossnet.train import checkpoint as ckpt
from mossnet.train import model_setup
from mossnet.train.loop import train


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_user_files_in_out_are_refused_and_untouched(make_cfg, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("model.safetensors", "vocab.json", "config.json", "notes.txt"):
        (out / name).write_text(f"user {name}")
    before = _tree(out)
    with pytest.raises(OutputDirError, match="not empty and was not written by this MossNet command"):
        train(make_cfg("mine"))
    assert _tree(out) == before
    # --force writes only MossNet's own entries beside them
    result = train(make_cfg("mine", force=True, max_steps=1))
    assert result.status == "done"
    after = _tree(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert ckpt.read_trainer_state(out)["step"] == 1


def test_force_never_replaces_a_foreign_reserved_entry(make_cfg, tmp_path):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_text("user's model")
    with pytest.raises(OutputDirError, match="already holds model, not written by MossNet"):
        train(make_cfg("mine", force=True))
    assert (out / "model" / "weights.bin").read_text() == "user's model"


@pytest.mark.parametrize("where", ["equal", "inside", "contains"])
def test_out_overlapping_data_is_refused(make_cfg, data_dir, tmp_path, where):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    out = {"equal": data, "inside": data / "run", "contains": tmp_path}[where]
    before = _tree(data)
    cfg = make_cfg("x")
    cfg.data, cfg.out = str(data), str(out)
    with pytest.raises(OutputDirError, match="--data"):
        train(cfg)
    assert _tree(data) == before


def test_existing_run_is_not_replaced_by_a_fresh_or_foreign_resume(make_cfg, tmp_path):
    first = train(make_cfg("a", max_steps=2))
    other = train(make_cfg("b", max_steps=1))
    before_a = _tree(Path(first.out))
    with pytest.raises(OutputDirError, match="already holds a training run .step 2.*--resume"):
        train(make_cfg("a", max_steps=3))  # a fresh run into A
    with pytest.raises(OutputDirError, match="already holds a training run .step 1"):
        train(make_cfg("b", max_steps=3, resume=first.out))  # resume A into B, which holds B's run
    assert _tree(Path(first.out)) == before_a
    assert ckpt.read_trainer_state(other.out)["step"] == 1


def test_resume_with_other_seq_len_or_data_needs_allow_change(make_cfg, tmp_path, capsys):
    first = train(make_cfg("a", max_steps=2))
    with pytest.raises(ConfigError, match=r"seq_len 32 -> 16.*--allow-change"):
        train(make_cfg("a", max_steps=3, resume=first.out, seq_len=16))
    result = train(make_cfg("a", max_steps=3, resume=first.out, seq_len=16, allow_change=True))
    assert result.step == 3 and "allowed change on resume: seq_len 32 -> 16" in capsys.readouterr().out
    assert "allow_change" not in (Path(first.out) / "trainer" / "train_config.yaml").read_text()


class _Signal(torch.nn.Module):
    """Sends ``signum`` to this process at forward call ``n`` (training or evaluation)."""

    def __init__(self, model, n, signum, train_only=True):
        super().__init__()
        self.inner, self.n, self.calls, self.signum = model, n, 0, signum
        self.train_only, self.config = train_only, model.config

    def forward(self, **kw):
        if self.training or not self.train_only:
            self.calls += 1
            if self.calls == self.n:
                os.kill(os.getpid(), self.signum)
        return self.inner(**kw)

    def save_pretrained(self, *a, **kw):
        return self.inner.save_pretrained(*a, **kw)


def test_sigterm_saves_says_so_and_exits_143(make_cfg, monkeypatch, capsys, data_dir, tmp_path):
    build = model_setup.build_model
    monkeypatch.setattr(model_setup, "build_model", lambda cfg, config: _Signal(build(cfg, config), 2, signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "term"
    code = main(["train", "--data", str(data_dir), "--out", str(out), "--seq-len", "32", "--batch-size", "4",
                 "--max-steps", "10", "--no-progress", "--no-tensorboard", "--device", "cpu", "sample_tokens=0",
                 "plot=false", "eval_interval=0", "model.d_model=32", "model.n_layers=1", "model.ssm_experts=2",
                 "model.ssm_top_k=1", "model.mlp_experts=2", "model.mlp_top_k=1", "model.mlp_hidden_dim=32"])
    assert code == 143
    captured = capsys.readouterr()
    assert "SIGTERM" in captured.err and "saving a checkpoint" in captured.err
    assert "stopped with the checkpoint of step 2" in captured.out
    assert ckpt.read_trainer_state(out)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_final_validation_keeps_the_final_checkpoint(make_cfg, monkeypatch, signum):
    """The final checkpoint is written before the final validation, so a signal there loses nothing."""
    build = model_setup.build_model
    cfg = make_cfg("final", max_steps=3, ckpt_interval=0, eval_interval=0)
    # forward calls: 3 training steps, then evaluation; the signal comes in the first evaluation call
    monkeypatch.setattr(model_setup, "build_model",
                        lambda c, config: _Signal(build(c, config), 4, signum, train_only=False))
    result = train(cfg)
    assert result.status == ("interrupted" if signum == signal.SIGINT else "terminated")
    assert ckpt.read_trainer_state(cfg.out)["step"] == 3
