"""TensorBoard is optional (the [logging] extra): without it a run says so in one line, once."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mossnet.train import metrics
from mossnet.train.metrics import MetricsLogger

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _without_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError


def test_missing_tensorboard_is_said_in_one_line_once(monkeypatch, tmp_path, capsys):
    _without_tensorboard(monkeypatch)
    logger = MetricsLogger(tmp_path, tensorboard=True)
    logger.close_tensorboard()
    logger.open_tensorboard()  # after a checkpoint save: not said again
    logger.log({"step": 1, "split": "train", "loss": 2.0})
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("TensorBoard logging is off: the tensorboard package is not installed")
    assert metrics.TENSORBOARD_REQUIREMENT in err and "--no-tensorboard" in err
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1  # the other logs still work


def test_no_message_when_tensorboard_is_not_wanted(monkeypatch, tmp_path, capsys):
    _without_tensorboard(monkeypatch)
    MetricsLogger(tmp_path, tensorboard=False).open_tensorboard()
    MetricsLogger(tmp_path / "rank1", enabled=False, tensorboard=True).open_tensorboard()
    assert capsys.readouterr().err == ""


def test_logging_extra_asks_for_the_advertised_tensorboard():
    extra = re.search(r"^logging = \[(.*)\]$", PYPROJECT.read_text(), re.M)
    assert extra and f'"{metrics.TENSORBOARD_REQUIREMENT}"' in extra.group(1)
