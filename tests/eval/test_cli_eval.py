"""`mossnet eval` end to end on a tiny random Llama checkpoint (CPU, a few seconds per run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mossnet.cli.main import main
from mossnet.eval.harness import main_scores
from mossnet.eval.perplexity import evaluate_perplexity

from .conftest import make_mossnet, needs_task_data

TASKS = "piqa,winogrande,arc_easy,lambada"


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _eval(*argv) -> int:
    return main(["eval", *map(str, argv), "--no-progress"])


@pytest.fixture(scope="module")
def lm_eval_runs(tiny_checkpoint, tmp_path_factory):
    """The same tiny lm-eval run through our adapter and through lm-eval's `hf` backend."""
    needs_task_data()
    pytest.importorskip("lm_eval")
    out = tmp_path_factory.mktemp("eval")
    runs = {}
    for backend in ("mossnet", "hf") if _has_accelerate() else ("mossnet",):
        path = out / f"{backend}.json"
        assert _eval(tiny_checkpoint, "--tasks", TASKS, "--limit", 4, "--batch-size", 3,
                     "--backend", backend, "--device", "cpu", "--output", path) == 0
        runs[backend] = json.loads(path.read_text())
    return runs


def test_tasks_run_and_write_results(lm_eval_runs):
    report = lm_eval_runs["mossnet"]["lm_eval"]
    scores = main_scores(report)
    assert set(scores) == {"offline_piqa", "offline_winogrande", "offline_arc_easy", "offline_lambada"}
    assert set(scores["offline_piqa"]) == {"acc", "acc_norm"}
    assert set(scores["offline_lambada"]) == {"acc", "perplexity"}
    assert all(0.0 <= v <= 1.0 for task in scores.values() for k, v in task.items() if k != "perplexity")
    assert report["mossnet"]["limit"] == 4
    assert "TEST split" in report["mossnet"]["sources"]["offline_arc_easy"]


def test_adapter_agrees_with_lm_eval_hf_backend(lm_eval_runs):
    if "hf" not in lm_eval_runs:
        pytest.skip("lm-eval's hf backend needs `accelerate`")
    ours, theirs = (main_scores(lm_eval_runs[b]["lm_eval"]) for b in ("mossnet", "hf"))
    assert ours.keys() == theirs.keys()
    for task, metrics in ours.items():
        for metric, value in metrics.items():
            assert value == pytest.approx(theirs[task][metric], rel=1e-4, abs=1e-6), (task, metric)


def test_mossnet_checkpoint_through_both_backends(tmp_path, tiny_tokenizer):
    """A MossNet checkpoint runs through our adapter and, because importing its model registers the
    Auto classes, through lm-eval's own `hf` backend too, with the same scores."""
    needs_task_data()
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm-eval's hf backend imports it
    model = make_mossnet(len(tiny_tokenizer))
    model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer.save_pretrained(tmp_path / "ckpt")
    scores = {}
    for backend in ("mossnet", "hf"):
        out = tmp_path / f"{backend}.json"
        assert _eval(tmp_path / "ckpt", "--tasks", "piqa", "--limit", 3, "--backend", backend,
                     "--device", "cpu", "--output", out) == 0
        scores[backend] = main_scores(json.loads(out.read_text())["lm_eval"])
    assert scores["mossnet"]["offline_piqa"] == pytest.approx(scores["hf"]["offline_piqa"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_tokenizer):
    """A minimal prepared corpus (val split only), written with mossnet.data's own writers."""
    from mossnet.data.token_store import FORMAT, token_dtype, write_manifest, write_tokens

    path = tmp_path_factory.mktemp("data")
    texts = ["A man is sitting on a roof. He starts pulling up roofing on a roof.",
             "Sarah was a much better surgeon than Maria so Maria always got the harder cases."] * 3
    docs = [np.array(tiny_tokenizer.encode(t) + [tiny_tokenizer.eos_token_id]) for t in texts]
    dtype = token_dtype(len(tiny_tokenizer))
    count, sha = write_tokens(path / "val.bin", docs, dtype)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    write_manifest(path, {
        "format": FORMAT, "corpus": "tiny", "tokenizer": "bpe", "vocab_size": len(tiny_tokenizer),
        "eos_id": tiny_tokenizer.eos_token_id, "dtype": dtype.name,
        "splits": {"val": {"file": "val.bin", "tokens": count, "bytes": n_bytes, "documents": len(texts), "sha256": sha}},
    })
    return path


def test_perplexity_command(tiny_checkpoint, tiny_llama, data_dir, tmp_path):
    out = tmp_path / "ppl.json"
    assert _eval(tiny_checkpoint, "--perplexity", "--data", data_dir, "--seq-len", 32, "--stride", 16,
                 "--device", "cpu", "--output", out) == 0
    got = json.loads(out.read_text())["perplexity"]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    tokens = np.fromfile(data_dir / "val.bin", dtype=manifest["dtype"])
    want = evaluate_perplexity(tiny_llama, tokens, manifest["splits"]["val"]["bytes"], 32, 16, progress=False)
    assert got["tokens"] == len(tokens) - 1
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-5)


def test_perplexity_needs_data(tiny_checkpoint, capsys):
    assert _eval(tiny_checkpoint, "--perplexity") == 2
    assert "--data" in capsys.readouterr().err


def test_nothing_to_do_and_missing_checkpoint(tmp_path, capsys):
    assert _eval(tmp_path) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert _eval(tmp_path / "nope", "--perplexity", "--data", tmp_path) == 2
    assert "nope does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_mossnet_eval_runs_lm_eval_cli(tiny_checkpoint, tmp_path):
    """`python -m mossnet.eval` is lm-eval's own CLI with our model name and task folder added."""
    needs_task_data()
    pytest.importorskip("lm_eval")
    command = [sys.executable, "-m", "mossnet.eval", "--model", "mossnet",
               "--model_args", f"pretrained={tiny_checkpoint}", "--batch_size", "2", "--tasks", "offline_piqa",
               "--limit", "2", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "offline_piqa" in done.stdout
