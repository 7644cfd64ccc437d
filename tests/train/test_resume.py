"""Exact resume, NaN stop, Ctrl-C: the trainer's promises about state."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mossnet.train import checkpoint as ckpt
from mossnet.train import model_setup
from mossnet.train.loop import TrainingDiverged, train
from mossnet.train.metrics import read_jsonl

N = 3


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model" / "model.safetensors"))


@pytest.mark.parametrize("arch, accum", [("mossnet", 1), ("mossnet", 2), ("llama", 1)])
def test_resume_is_exact(make_cfg, arch, accum):
    """2N steps straight == N steps, resume, N more steps: same losses, same weights, bit for bit."""
    kw = dict(arch=arch, grad_accum=accum, eval_interval=N, ckpt_interval=N)
    straight = train(make_cfg("straight", max_steps=2 * N, **kw))
    first = train(make_cfg("split", max_steps=N, **kw))
    # continue in the same directory; the schedule (max_steps) is the full run's
    cut = make_cfg("split", max_steps=2 * N, resume=first.out, **kw)
    second = train(cut)
    assert first.losses + second.losses == straight.losses
    assert straight.losses[0] != straight.losses[-1]
    a, b = _weights(straight.out), _weights(second.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run's log continues the first one's
    steps = [r["step"] for r in read_jsonl(Path(second.out) / "logs" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == list(range(1, 2 * N + 1))


def test_resume_from_a_mid_run_checkpoint_into_new_dir(make_cfg):
    """--resume DIR --out OTHER: the old run is untouched, the new one continues it exactly."""
    straight = train(make_cfg("straight", max_steps=4, ckpt_interval=2))
    partial = make_cfg("partial", max_steps=4, ckpt_interval=2)
    first = train(make_cfg("partial", max_steps=2))
    assert ckpt.read_trainer_state(first.out)["step"] == 2
    second = train(make_cfg("continued", max_steps=4, resume=first.out))
    assert first.losses + second.losses == straight.losses
    assert ckpt.read_trainer_state(first.out)["step"] == 2 and partial.out == first.out


class _NaNAfter(torch.nn.Module):
    """Wraps a model; its logits become NaN from forward call ``n`` on."""

    def __init__(self, model, n):
        super().__init__()
        self.inner, self.n, self.calls = model, n, 0
        self.config = model.config

    def forward(self, **kw):
        out = self.inner(**kw)
        self.calls += 1
        if self.training and self.calls >= self.n:
            out.logits = out.logits * float("nan")
        return out

    def save_pretrained(self, *a, **kw):
        return self.inner.save_pretrained(*a, **kw)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(make_cfg, monkeypatch):
    build = model_setup.build_model
    monkeypatch.setattr(model_setup, "build_model", lambda cfg, config: _NaNAfter(build(cfg, config), n=4))
    cfg = make_cfg("nan", max_steps=6, ckpt_interval=2)
    with pytest.raises(TrainingDiverged) as err:
        train(cfg)
    msg = str(err.value)
    assert "diverged at step 4" in msg and "loss is not finite" in msg
    assert "last good checkpoint (step 2)" in msg and str(cfg.out) in msg
    assert ckpt.read_trainer_state(cfg.out)["step"] == 2
    weights = _weights(cfg.out)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert read_jsonl(Path(cfg.out) / "logs" / "metrics.jsonl")[-1]["split"] == "diverged"


def test_ctrl_c_saves_and_stops(make_cfg, monkeypatch):
    build = model_setup.build_model

    class Interrupt(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner, self.calls, self.config = model, 0, model.config

        def forward(self, **kw):
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C during step 3
            return self.inner(**kw)

        def save_pretrained(self, *a, **kw):
            return self.inner.save_pretrained(*a, **kw)

    monkeypatch.setattr(model_setup, "build_model", lambda cfg, config: Interrupt(build(cfg, config)))
    cfg = make_cfg("int", max_steps=10)
    # What was installed before (Python's default, or SIG_IGN when the tests run as a background
    # job of a non-interactive shell) must be back afterwards.
    before = signal.getsignal(signal.SIGINT)
    result = train(cfg)
    assert result.status == "interrupted" and result.step == 3  # step 3 completed, then saved
    state = ckpt.read_trainer_state(cfg.out)
    assert state["step"] == 3
    assert json.loads((Path(cfg.out) / "trainer" / "rank0.json").read_text())["data"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
