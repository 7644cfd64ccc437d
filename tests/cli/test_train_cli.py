"""``mossnet train`` from the command line: YAML + flags + overrides, resume, clear failures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mossnet.cli.main import main

_spec = importlib.util.spec_from_file_location("train_helpers", Path(__file__).parents[1] / "train" / "trainer_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

MODEL = [f"model.{k}={v}" for k, v in helpers.TINY_MODEL.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return helpers.make_data_dir(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(data_dir, out, *extra, max_steps=2):
    return main(["train", "--data", str(data_dir), "--out", str(out), "--max-steps", str(max_steps), "--seq-len", "32",
                 "--batch-size", "4", "--no-progress", "--no-tensorboard", *extra, "sample_tokens=0", "plot=false",
                 "num_threads=1", "eval_tokens=256", *MODEL])


def test_yaml_flags_and_overrides(data_dir, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 0.002\nwarmup_steps: 1\nlog_interval: 1\neval_interval: 0\nmodel:\n  n_layers: 1\n")
    out = tmp_path / "run"
    assert _train(data_dir, out, "--config", str(cfg), "--lr", "0.004", "grad_clip=0.5") == 0
    text = capsys.readouterr().out
    assert "mossnet (validation)" in text and "bigram baseline" in text
    saved = (out / "trainer" / "train_config.yaml").read_text()
    assert "lr: 0.004" in saved and "grad_clip: 0.5" in saved and "warmup_steps: 1" in saved
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["n_layers"] == 2  # the override model.n_layers=2 comes after the YAML's 1
    records = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert records[-1]["split"] == "final" and "model_loss" in records[-1] and "bigram_loss" in records[-1]
    assert (out / "logs" / "metrics.csv").read_text().splitlines()[0].startswith("step,split,loss")


def test_resume_takes_the_saved_config(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data_dir, out, "--lr", "0.005", max_steps=2) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--max-steps", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "at step 2" in text
    state = json.loads((out / "trainer" / "state.json").read_text())
    assert state["step"] == 3
    assert "lr: 0.005" in (out / "trainer" / "train_config.yaml").read_text()


def test_bad_checkpoint_and_bad_options_exit_2(data_dir, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "run"
    assert _train(data_dir, out, max_steps=1) == 0
    (out / "trainer" / "optimizer.safetensors").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--max-steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.safetensors" in err and "Traceback" not in err
    assert main(["train", "--data", str(data_dir), "--out", str(out), "lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err


@pytest.mark.parametrize("arch", ["llama", "mamba2"])
def test_baselines_train_through_the_same_pipeline(data_dir, tmp_path, capsys, arch):
    out = tmp_path / arch
    assert _train(data_dir, out, "--arch", arch, max_steps=1) == 0
    text = capsys.readouterr().out
    cls = {"llama": "LlamaForCausalLM", "mamba2": "Mamba2ForCausalLM"}[arch]
    assert f"model: {arch} ({cls})" in text and "parameters" in text
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == arch


def test_flag_spellings_are_a_contract():
    """Every flag `mossnet train` has ever documented still parses (they come from TrainConfig's fields)."""
    import argparse

    from mossnet.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    spellings = {s for action in parser._actions for s in action.option_strings}
    contract = {"--preset", "--arch", "--data", "--out", "--config", "--resume", "--init-from", "--force",
                "--allow-change", "--print-config", "--max-steps", "--batch-size", "--seq-len", "--grad-accum", "--lr",
                "--warmup-steps", "--weight-decay", "--grad-clip", "--seed", "--log-interval", "--eval-interval",
                "--eval-tokens", "--ckpt-interval", "--no-progress", "--no-tensorboard", "--device", "--dtype",
                "--compile", "--cuda-graph", "--no-cuda-graph", "--fsdp", "--num-threads"}
    assert contract <= spellings, contract - spellings
    assert all(a.help for a in parser._actions)
