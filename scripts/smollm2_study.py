#!/usr/bin/env python
"""Evaluation and summary for the SmolLM2-135M distillation study (scripts/distill_smollm2.sh).

    python scripts/smollm2_study.py evaluate --model DIR_OR_GGUF --name NAME --out results/NAME.json \
        --requests requests.jsonl.gz --data REAL_CORPUS [--teacher GGUF] [--passkey 1024,4096,16384]
    python scripts/smollm2_study.py summarize --work WORK_DIR --out study.json

``evaluate`` measures one model (the teacher or a student), every number side by side with the
same code: the six zero-shot tasks from a frozen request file (lm-eval's prompts and metrics,
mossnet.eval.request_file), held-out perplexity on the test split of the real corpus (never
trained on), the recall probes (mossnet.eval.probes), greedy samples from fixed plain-text
prompts, and, for a student given ``--teacher``, the per-layer relative error of its mixers
against the teacher's attention (mossnet.convert.layer_errors). ``summarize`` gathers the result
files, the runs' learning curves and the pipeline's timings into one compact JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Plain text, no chat template: the Instruct teacher is prompted exactly like the students.
SAMPLE_PROMPTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "To make a cup of tea, first",
    "In Python, a list comprehension",
    "The three primary colors are",
)
LAYER_ERROR_SEQUENCES = 4  # x --window tokens from the test split, as the conversion's step-0 table


def load(model_path: str, device: str):
    from mossnet.eval.loading import load_causal_lm

    path = Path(model_path)
    if path.suffix == ".gguf":
        return load_causal_lm(str(path.parent), gguf_file=path.name, device=device, dtype="float32")
    return load_causal_lm(model_path, device=device, dtype="float32", verify=True)


def held_out_tokens(data: str, split: str = "test"):
    from mossnet.data import open_split

    return open_split(data, split)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from mossnet.eval.perplexity import evaluate_split
    from mossnet.eval.probes import passkey_retrieval, repeated_passage_loss
    from mossnet.eval.request_file import score_request_file

    timings: dict[str, float] = {}
    model, tokenizer = load(args.model, args.device)
    result: dict[str, Any] = {"name": args.name, "model": args.model,
                              "parameters": sum(p.numel() for p in model.parameters())}

    def timed(key, fn):
        started = time.perf_counter()
        value = fn()
        timings[key] = round(time.perf_counter() - started, 1)
        print(f"[{args.name}] {key}: {timings[key]} s", flush=True)
        return value

    tokens = held_out_tokens(args.data)
    if args.teacher:
        result["layer_errors"] = timed("layer_errors", lambda: student_layer_errors(model, args.teacher, tokens,
                                                                                   args.device, args.window))
    if args.layer_errors_only:
        result["timings"] = timings
        return result
    for key, path in (("tasks", args.requests), ("tasks_check", args.requests_check)):
        if path:
            result[key] = timed(key, lambda p=path: score_request_file(model, tokenizer, p, batch_size=args.batch_size,
                                                                         progress=False)["tasks"])
    result["held_out"] = timed("held_out", lambda: evaluate_split(
        model, args.data, "test", seq_len=4 * args.window, stride=2 * args.window, batch_size=8, progress=False))
    result["repeated_passage"] = timed("repeated_passage", lambda: repeated_passage_loss(
        model, np.asarray(tokens), passages=64, passage_len=args.window))
    lengths = [int(n) for n in args.passkey.split(",") if n]
    result["passkey"] = timed("passkey", lambda: passkey_retrieval(model, tokenizer, lengths, trials=args.passkey_trials))
    result["samples"] = timed("samples", lambda: samples(model, tokenizer))
    result["timings"] = timings
    result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    return result


def student_layer_errors(student, teacher_path: str, tokens, device: str, length: int) -> list[float]:
    import numpy as np
    import torch

    from mossnet.convert import layer_errors

    teacher, _ = load(teacher_path, device)
    n = LAYER_ERROR_SEQUENCES
    stride = (len(tokens) - length) // n
    ids = torch.from_numpy(np.stack([np.asarray(tokens[i * stride : i * stride + length]) for i in range(n)])
                           .astype(np.int64)).to(next(student.parameters()).device)
    errors = layer_errors(teacher, student, ids)
    del teacher
    return [round(e, 4) for e in errors]


def samples(model, tokenizer, max_new_tokens: int = 48) -> list[dict[str, str]]:
    import torch

    device = next(model.parameters()).device
    out = []
    for prompt in SAMPLE_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)], device=device)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append({"prompt": prompt, "greedy": tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)})
    return out


# ----------------------------------------------------------------------------------------------


def learning_curve(run_dir: Path, points: int = 40) -> list[dict[str, float]]:
    """Up to ``points`` evenly spaced records of a run's logs/metrics.jsonl (step, loss, tokens/s, ...)."""
    path = run_dir / "logs" / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r or "train_loss" in r]
    every = max(1, len(train) // points)
    keep = ("step", "loss", "train_loss", "val_loss", "tokens_per_s", "tokens_per_second", "lr", "tokens", "elapsed_s")
    picked = train[::every] + ([train[-1]] if train and (len(train) - 1) % every else [])
    vals = [r for r in records if "val_loss" in r and r not in picked]
    return [{k: r[k] for k in keep if k in r} for r in picked + vals]


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    summary: dict[str, Any] = {"models": {}, "runs": {}, "timings": {}}
    for path in sorted((work / "results").glob("*.json")):
        summary["models"][path.stem] = json.loads(path.read_text())
    for run in sorted(work.glob("runs/*")):
        summary["runs"][run.name] = {"curve": learning_curve(run)}
        config = run / "trainer" / "train_config.yaml"
        if config.is_file():
            import yaml

            cfg = yaml.safe_load(config.read_text())
            summary["runs"][run.name]["config"] = {k: cfg.get(k) for k in (
                "seq_len", "batch_size", "grad_accum", "max_steps", "lr", "warmup_steps", "data", "distill")}
    timing_file = work / "timings.tsv"
    if timing_file.is_file():
        for line in timing_file.read_text().splitlines():
            step, seconds = line.split("\t")
            summary["timings"][step] = float(seconds)
    for name in ("synth", "real"):
        manifest = work / "data" / name / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            summary.setdefault("data", {})[name] = {"train_tokens": m["splits"]["train"]["tokens"],
                                                    **{k: m[k] for k in ("synth",) if k in m}}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate")
    ev.add_argument("--model", required=True)
    ev.add_argument("--name", required=True)
    ev.add_argument("--out", required=True)
    ev.add_argument("--data", required=True, help="the real prepared corpus (its test split is held out)")
    ev.add_argument("--requests", default=None)
    ev.add_argument("--requests-check", default=None, help="a second (small) request file, e.g. --limit 200")
    ev.add_argument("--teacher", default=None, help="for a student: per-layer error against this teacher")
    ev.add_argument("--layer-errors-only", action="store_true")
    ev.add_argument("--passkey", default="1024,4096,16384")
    ev.add_argument("--passkey-trials", type=int, default=10)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--window", type=int, default=256,
                    help="tokens per repeated passage and per layer-error window; held-out perplexity uses 4x (default 256)")
    ev.add_argument("--device", default="cuda")
    sm = sub.add_parser("summarize")
    sm.add_argument("--work", required=True)
    sm.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = evaluate(args) if args.command == "evaluate" else summarize(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
