"""A user's own text, as they would type it: prepare-data on a folder of .txt files with a
SmolLM2-style tokenizer folder, then train 20 steps, then generate."""

from __future__ import annotations

import random

import pytest
import torch

from mossnet.cli.main import main
from mossnet.data.token_store import read_manifest

TINY_MODEL = {"d_model": 32, "n_layers": 2, "ssm_experts": 2, "ssm_top_k": 1, "ssm_head_dim": 16,
              "ssm_state_dim": 8, "mlp_experts": 2, "mlp_top_k": 1, "mlp_hidden_dim": 64, "chunk_size": 16}
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A small model learns to read and to write.",
    "When the night is long the stars are bright.", "The river runs down to the sea.",
    "She said that the king would come at dawn.", "The birds sing in the trees.",
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_prepare_train_generate_on_a_folder_of_text_files(tmp_path, capsys, smol_tokenizer_dir):
    texts = tmp_path / "my_texts"
    texts.mkdir()
    rng = random.Random(0)
    for i in range(40):
        (texts / f"note_{i:02d}.txt").write_text("\n".join(rng.choice(SENTENCES) for _ in range(rng.randint(4, 9))))
    data, run = tmp_path / "data", tmp_path / "run"

    assert main(["prepare-data", "--input", str(texts), "--tokenizer", str(smol_tokenizer_dir), "--out", str(data),
                 "--val-fraction", "0.1", "--no-progress"]) == 0
    manifest = read_manifest(data)
    assert manifest["vocab_size"] == 400 and manifest["eos_token"] == "<|endoftext|>"
    assert manifest["splits"]["train"]["documents"] + manifest["splits"].get("val", {}).get("documents", 0) \
        + manifest["splits"].get("test", {}).get("documents", 0) == 40

    # `train` and `generate` write and read a run directory whose layout is being reworked
    # (RUN/model, RUN/trainer, RUN/logs): this test checks only exit codes and that text comes out.
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "20", "--seq-len", "32",
                 "--batch-size", "4", "--no-progress", "--no-tensorboard", "sample_tokens=0", "plot=false",
                 "num_threads=1", "eval_tokens=256", "eval_interval=10",
                 *(f"model.{k}={v}" for k, v in TINY_MODEL.items())]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "The quick", "--max-new-tokens", "12", "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() and "The quick" in printed
