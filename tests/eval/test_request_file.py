"""Frozen request files score exactly what lm-eval scores, without lm-eval at scoring time."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from mossnet.errors import DataError  # noqa: E402
from mossnet.eval.request_file import export_requests, read_request_file, score_request_file, task_metrics  # noqa: E402

from .conftest import needs_task_data  # noqa: E402

TASKS = ["hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "lambada"]
LIMIT = 6


@pytest.fixture(scope="module")
def request_file(tmp_path_factory):
    needs_task_data()
    path = tmp_path_factory.mktemp("requests") / "requests.jsonl.gz"
    export_requests(TASKS, path, limit=LIMIT)
    return path


def test_scores_equal_lm_eval_harness(request_file, tiny_llama, tiny_tokenizer):
    """Same model, same documents: every metric of every task equals lm-eval's own computation."""
    from mossnet.eval.harness import main_scores, run_tasks
    from mossnet.eval.lm_eval_adapter import MossNetLM

    lm = MossNetLM(tiny_llama, tokenizer=tiny_tokenizer, batch_size=4, device="cpu")
    theirs = main_scores(run_tasks(lm, TASKS, limit=LIMIT, batch_size=4, device="cpu", bootstrap_iters=0))
    ours = score_request_file(tiny_llama, tiny_tokenizer, request_file, batch_size=3, progress=False)["tasks"]
    assert set(ours) == set(theirs)
    for task, metrics in theirs.items():
        assert ours[task]["documents"] == LIMIT
        for name, value in metrics.items():
            assert ours[task][name] == pytest.approx(value, rel=1e-6), (task, name)


def test_file_holds_lm_eval_prompts_and_gold(request_file):
    header, documents = read_request_file(request_file)
    assert {info["documents"] for info in header["tasks"].values()} == {LIMIT}
    hellaswag = [d for d in documents if d["task"] == "offline_hellaswag"]
    assert all(len(d["requests"]) == 4 and 0 <= d["gold"] < 4 for d in hellaswag)
    assert all(len(d["choice_chars"]) == 4 for d in hellaswag)
    winogrande = [d for d in documents if d["task"] == "offline_winogrande"][0]
    (context_a, continuation_a), (context_b, continuation_b) = winogrande["requests"]
    assert continuation_a == continuation_b and context_a != context_b  # two contexts, one continuation
    lambada = [d for d in documents if d["task"] == "offline_lambada"][0]
    assert "gold" not in lambada and len(lambada["requests"]) == 1


def test_metrics_follow_lm_eval_definitions():
    header = {"tasks": {"mc": {"output_type": "multiple_choice", "metrics": ["acc", "acc_norm"]},
                        "ll": {"output_type": "loglikelihood", "metrics": ["acc", "perplexity"]}}}
    docs = [{"task": "mc", "gold": 1, "choice_chars": [1, 10], "requests": [["q", "a"], ["q", "b"]]},
            {"task": "ll", "requests": [["c", "t"]]}, {"task": "ll", "requests": [["c", "u"]]}]
    # raw: choice 0 wins (-2 > -5); per character: choice 1 wins (-0.5 > -2)
    scores = [(-2.0, False), (-5.0, False), (-1.0, True), (-3.0, False)]
    metrics = task_metrics(header, docs, scores)
    assert metrics["mc"] == {"documents": 1, "acc": 0.0, "acc_norm": 1.0}
    assert metrics["ll"]["acc"] == 0.5
    assert metrics["ll"]["perplexity"] == pytest.approx(2.718281828 ** 2)


@pytest.mark.parametrize("damage", ["truncate", "not-gzip", "wrong-format"])
def test_damaged_file_is_refused(request_file, tmp_path, damage):
    bad = tmp_path / "bad.jsonl.gz"
    lines = gzip.open(request_file, "rt", encoding="utf-8").read().splitlines()
    if damage == "truncate":
        bad.write_bytes(gzip.compress(("\n".join(lines[:-2]) + "\n").encode()))
    elif damage == "not-gzip":
        bad.write_text("hello")
    else:
        bad.write_bytes(gzip.compress((json.dumps({"format": "other"}) + "\n").encode()))
    with pytest.raises(DataError, match=str(bad)):
        read_request_file(bad)


def test_cli_scores_a_request_file(request_file, tiny_checkpoint, tmp_path, capsys):
    from mossnet.cli.main import main

    out = tmp_path / "results.json"
    code = main(["eval", str(tiny_checkpoint), "--requests", str(request_file), "--device", "cpu", "--output", str(out),
                 "--no-progress", "--no-verify"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())["requests"]
    assert set(result["tasks"]) == {f"offline_{t}" for t in TASKS}
    assert "offline_hellaswag: acc" in capsys.readouterr().out


def test_cli_refuses_a_missing_request_file(tiny_checkpoint, tmp_path):
    """In a fresh process, as a user runs it: one line, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "mossnet.cli.main", "eval", str(tiny_checkpoint), "--requests",
                           str(tmp_path / "nope.jsonl.gz"), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no such request file" in proc.stderr and "Traceback" not in proc.stderr
