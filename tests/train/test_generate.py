"""``mossnet generate``: streams text from a trained checkpoint (MossNet or a baseline)."""

from __future__ import annotations

import pytest

from mossnet.cli.main import main
from mossnet.train.loop import train


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_dir):
    from trainer_helpers import tiny_config

    root = tmp_path_factory.mktemp("gen")
    out = {}
    for arch in ("mossnet", "llama"):
        cfg = tiny_config(data_dir, root / arch, arch=arch, max_steps=2)
        train(cfg)
        out[arch] = cfg.out
    return out


@pytest.mark.parametrize("arch", ["mossnet", "llama"])
def test_greedy_is_deterministic_and_streams_the_prompt(checkpoints, capsys, arch):
    args = ["generate", checkpoints[arch], "--prompt", "The king", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("The king") and len(first) > len("The king")
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_sampling_with_seed_is_reproducible(checkpoints, capsys):
    args = ["generate", checkpoints["mossnet"], "--prompt", "The", "--max-new-tokens", "12", "--temperature", "1.0",
            "--top-p", "0.9", "--seed", "3"]
    assert main(args) == 0
    a = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == a


def test_no_prompt_and_bad_input(checkpoints, tmp_path, capsys):
    assert main(["generate", checkpoints["mossnet"], "--max-new-tokens", "4", "--temperature", "0"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "not a model directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse refuses the value before anything loads
        main(["generate", checkpoints["mossnet"], "--prompt", "x", "--max-new-tokens", "0"])
    assert refused.value.code == 2
