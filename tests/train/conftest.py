"""Fixtures of the trainer tests: one tiny prepared corpus per session, tiny configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from trainer_helpers import make_data_dir, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data") / "corpus")


@pytest.fixture
def make_cfg(data_dir, tmp_path):
    """``make_cfg(out="run", **overrides) -> TrainConfig`` writing under this test's tmp dir."""

    def make(out: str = "run", **kw):
        return tiny_config(data_dir, tmp_path / out, **kw)

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: bit-for-bit reproducible on CPU, and fast when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
