"""Logs: router load and the collapse warning, metrics files, the loss-curve PNG."""

from __future__ import annotations

import builtins
from pathlib import Path
from types import SimpleNamespace

import pytest

from mossnet.train.loop import train
from mossnet.train.router_monitor import RouterMonitor
from mossnet.train.metrics import read_jsonl
from mossnet.train.plots import plot_loss_curve


def test_router_collapse_warns_once_and_notes_recovery():
    messages = []
    t = RouterMonitor(0.5, SimpleNamespace(), messages.append)
    t.check({"layers.0.mixer": [0.25, 0.25, 0.25, 0.25], "layers.0.mlp": [0.97, 0.01, 0.01, 0.01]}, 7)
    assert len(messages) == 1 and "router layers.0.mlp has collapsed onto 1.2 of 4 experts at step 7" in messages[0]
    t.check({"layers.0.mlp": [0.97, 0.01, 0.01, 0.01]}, 8)
    assert len(messages) == 1  # no repeat while it stays collapsed
    t.check({"layers.0.mlp": [0.3, 0.3, 0.2, 0.2]}, 9)
    assert "recovered" in messages[-1]
    t.check({"single": [1.0]}, 10)  # one expert: nothing to balance
    assert len(messages) == 2


def test_metrics_have_router_load_and_val(make_cfg):
    cfg = make_cfg("logs", max_steps=4, log_interval=2, eval_interval=2, plot=True)
    result = train(cfg)
    records = read_jsonl(Path(cfg.out) / "logs" / "metrics.jsonl")
    train_recs = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == [2, 4]
    load = train_recs[0]["router_load"]
    assert len(load) == 4  # 2 layers x (SSM router + MLP router)
    for fractions in load.values():
        assert len(fractions) == 2 and sum(fractions) == pytest.approx(1.0)
    vals = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in vals] == [2, 4] and all(r["tokens"] > 0 for r in vals)
    assert vals[-1]["loss"] == pytest.approx(result.final["model"]["loss"])
    assert (Path(cfg.out) / "logs" / "loss_curve.png").stat().st_size > 1000
    csv_lines = (Path(cfg.out) / "logs" / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(records)


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    note = plot_loss_curve([{"step": 1, "split": "train", "loss": 1.0}], tmp_path / "x.png")
    assert "matplotlib is not installed" in note and not (tmp_path / "x.png").exists()
