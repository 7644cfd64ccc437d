"""TrainConfig: presets, YAML files, flags and key=value overrides, with errors that help."""

from __future__ import annotations

import pytest

from mossnet.train.config import TRAIN_PRESETS, build_config, parse_overrides

BASE = {"data": "d", "out": "o"}


def test_preset_defaults_then_layers(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("lr: 0.002\nbatch_size: 3\nwarmup-steps: 7\nmodel:\n  d_model: 64\n  n_layers: 3\n")
    cfg = build_config(yaml_path=str(y), flags={**BASE, "batch_size": 5, "seed": None},
                       overrides=["warmup_steps=9", "model.n_layers=5", "grad_clip=0.5", "compile=true"])
    assert cfg.preset == "tiny"
    assert cfg.seq_len == TRAIN_PRESETS["tiny"]["seq_len"]  # from the preset
    assert cfg.lr == 0.002  # YAML beats preset
    assert cfg.batch_size == 5  # flag beats YAML
    assert cfg.warmup_steps == 9  # override beats everything
    assert cfg.model == {"d_model": 64, "n_layers": 5}  # merged key by key
    assert cfg.grad_clip == 0.5 and cfg.compile is True
    assert cfg.seed == 1337  # a None flag (not given) changes nothing


def test_saved_config_is_below_yaml_and_flags(tmp_path):
    saved = {**BASE, "lr": 0.1, "max_steps": 10, "preset": "small"}
    cfg = build_config(saved=saved, flags={"max_steps": 20})
    assert cfg.preset == "small" and cfg.lr == 0.1 and cfg.max_steps == 20


def test_override_types():
    cfg = build_config(flags=BASE, overrides=["lr=1e-3", "max_steps=1e3", "progress=no", "model.dt_max=0.2",
                                              "model.state_update=all", "model.A_init_range=[1, 8]"])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.max_steps == 1000 and isinstance(cfg.max_steps, int)
    assert cfg.progress is False
    assert cfg.model == {"dt_max": 0.2, "state_update": "all", "A_init_range": [1, 8]}


@pytest.mark.parametrize("items, match", [
    (["lrr=1"], "unknown training option 'lrr'.*did you mean 'lr'"),
    (["max_steps=1.5"], "max_steps: expected int"),
    (["lr"], "not of the form key=value"),
    (["compile=maybe"], "expected a boolean"),
    (["max_steps=0"], "max_steps must be >= 1"),
    (["arch=gpt"], "arch must be one of"),
    (["preset=huge"], "unknown preset"),
])
def test_bad_overrides(items, match):
    with pytest.raises(ValueError, match=match):
        build_config(flags=BASE, overrides=items)


def test_bad_yaml(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        build_config(yaml_path=str(y), flags=BASE)
    y.write_text("lr: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        build_config(yaml_path=str(y), flags=BASE)
    with pytest.raises(ValueError, match="does not exist"):
        build_config(yaml_path=str(tmp_path / "missing.yaml"), flags=BASE)


def test_missing_data_and_out():
    with pytest.raises(ValueError, match="--data"):
        build_config(flags={"out": "o"})
    with pytest.raises(ValueError, match="--out"):
        build_config(flags={"data": "d"})


def test_parse_overrides_model_values():
    assert parse_overrides(["model.n_layers=3", "model.rescale_residual=false", "lr=2"]) == {
        "model": {"n_layers": 3, "rescale_residual": False}, "lr": "2"}
