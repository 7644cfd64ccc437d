"""--init-from: a new run from a model's weights, with a fresh optimizer and schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mossnet.errors import ConfigError, OutputDirError
from mossnet.train import checkpoint as ckpt
from mossnet.train.loop import train


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run) / "model" / "model.safetensors"))


@pytest.fixture
def source(make_cfg):
    return train(make_cfg("source", max_steps=2))


def test_init_from_copies_weights_and_starts_fresh(source, make_cfg, monkeypatch):
    from mossnet.train import loop

    seen = {}
    real = loop.build_optimizer

    def spy(model, *args, **kwargs):
        optimizer = real(model, *args, **kwargs)
        seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["optimizer_state"] = len(optimizer.state)
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", spy)
    result = train(make_cfg("tuned", max_steps=1, init_from=source.out))
    src = _weights(source.out)
    assert all(torch.equal(seen["weights"][k].cpu(), v) for k, v in src.items())  # start == source, bit for bit
    assert seen["optimizer_state"] == 0  # a fresh optimizer
    state = ckpt.read_trainer_state(result.out)
    assert state["step"] == 1 and result.step == 1  # counted from 0
    assert ckpt.read_trainer_state(source.out)["step"] == 2  # the source is untouched


def test_init_from_takes_shape_keeping_overrides_and_refuses_others(source, make_cfg):
    result = train(make_cfg("k2", max_steps=1, init_from=source.out, model={"ssm_top_k": 2}))
    import json

    assert json.loads((Path(result.out) / "model" / "config.json").read_text())["ssm_top_k"] == 2
    with pytest.raises(ConfigError, match="model.d_model=48 would change the model.*only these keep"):
        train(make_cfg("wide", max_steps=1, init_from=source.out, model={"d_model": 48}))


def test_init_from_into_its_own_directory_is_refused(source, make_cfg):
    with pytest.raises(OutputDirError, match="is the --init-from directory"):
        train(make_cfg("source", max_steps=1, init_from=source.out))
    assert ckpt.read_trainer_state(source.out)["step"] == 2
    with pytest.raises(ConfigError, match="exclude each other"):
        train(make_cfg("x", max_steps=1, init_from=source.out, resume=source.out))
