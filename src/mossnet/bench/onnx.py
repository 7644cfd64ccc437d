"""The ONNX decode step of a ``mossnet export --quantize`` folder in onnxruntime, fp32 against
int8: one process per variant (latency from zero state on random tokens, resident memory, file
size, and with ``--eval-tokens`` teacher-forced perplexity through the decode step alone), then
how far the int8 logits drift from the fp32 ones."""

from __future__ import annotations

import json
import os
import time

from mossnet.bench.isolated import worker_command
from mossnet.bench.measure import decode_stats
from mossnet.bench.memory import peak_rss_mb, rss_mb
from mossnet.bench.report import machine_info, print_row, write_json
from mossnet.isolated_jobs import read_results, run_job

VARIANTS = ("fp32", "int8")
WARMUP_STEPS = 3
DRIFT_POSITIONS = 64  # leading positions whose logits are kept to compare the variants


def _decode_step(session, manifest):
    """step(token, states) -> (logits, new states) through the exported decode step."""
    import numpy as np

    names = [s["name"] for s in manifest["states"]]

    def step(token, states):
        logits, *new = session.run(None, {"input_ids": np.array([[token]], dtype=np.int64), **dict(zip(names, states))})
        return logits[0], new

    return step


def _random_steps(step, states, rng, vocab_size: int, n: int) -> tuple[list, list[float]]:
    """``n`` steps on random tokens from ``states``: the final states and each step's time (ms)."""
    times = []
    for _ in range(n):
        token = int(rng.integers(vocab_size))
        t0 = time.perf_counter()
        _, states = step(token, states)
        times.append((time.perf_counter() - t0) * 1e3)
    return states, times


def _perplexity(step, zeros, tokens_path: str, n: int, logits_path: str) -> dict:
    """Teacher-forced perplexity over the first ``n`` next tokens of a uint16 token file; the
    first positions' logits are saved to ``logits_path`` for the drift comparison."""
    import numpy as np

    tokens = np.fromfile(tokens_path, dtype=np.uint16)[: n + 1].astype(np.int64)
    states, nll, first_logits = zeros, 0.0, []
    for t in range(len(tokens) - 1):
        logits, states = step(int(tokens[t]), states)
        z = logits.astype(np.float64)
        nll += float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[tokens[t + 1]])
        if t < DRIFT_POSITIONS:
            first_logits.append(logits)
    np.save(logits_path, np.stack(first_logits))
    return {"eval_tokens": int(len(tokens) - 1), "perplexity": round(float(np.exp(nll / (len(tokens) - 1))), 3)}


def measure_onnx(directory: str, variant: str, args) -> dict:
    """One process per variant ("fp32" / "int8"): decode latency from zero state on random
    tokens, resident memory, and (with --eval-tokens) teacher-forced perplexity computed
    through the decode step alone."""
    import numpy as np
    import onnxruntime as ort

    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    key = "decode_step" + ("_int8" if variant == "int8" else "")
    path = os.path.join(directory, manifest["files"][key])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    baseline = rss_mb()  # the interpreter and its imports, before the model
    t0 = time.perf_counter()
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    row = {"model": f"onnx-{variant}", "file_mb": round(os.path.getsize(path) / 2**20, 1),
           "threads": args.threads, "load_s": round(time.perf_counter() - t0, 1), "rss_baseline_mb": round(baseline, 1)}
    step = _decode_step(session, manifest)
    zeros = [np.zeros(s["shape"], dtype=np.float32) for s in manifest["states"]]
    rng = np.random.default_rng(0)
    states, _ = _random_steps(step, zeros, rng, manifest["vocab_size"], WARMUP_STEPS)
    row["rss_loaded_mb"] = round(rss_mb(), 1)
    _, times = _random_steps(step, states, rng, manifest["vocab_size"], args.decode_tokens)
    row["decode_tokens"] = len(times)
    row.update(decode_stats(times))
    if args.eval_tokens:
        logits_path = os.path.join(args.json_dir, f"logits_{variant}.npy")
        row.update(_perplexity(step, zeros, args.eval_tokens, args.eval_n, logits_path))
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    row["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return row


def _softmax(x):
    import numpy as np

    p = np.exp(x - x.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def logits_drift(a, b) -> dict:
    """How far int8 logits ``b`` stray from fp32 logits ``a`` (positions x vocabulary, float64)."""
    import numpy as np

    pa, pb = _softmax(a), _softmax(b)
    return {"model": "int8-vs-fp32", "positions": int(a.shape[0]),
            "logits_max_abs_diff": round(float(np.abs(a - b).max()), 4),
            "logits_rel_rms": round(float(np.sqrt(((a - b) ** 2).mean() / (a ** 2).mean())), 5),
            "top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).mean()), 4),
            "kl_fp32_int8_mean": round(float((pa * (np.log(pa + 1e-30) - np.log(pb + 1e-30))).sum(-1).mean()), 6)}


def _run_variant(variant: str, args) -> list[dict]:
    """``measure_onnx`` of one variant in a worker process; an error row if it gave none."""
    cmd = worker_command("--worker-onnx", variant, "--onnx-dir", args.onnx_dir,
                         "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
                         "--eval-n", str(args.eval_n), "--json-dir", args.json_dir)
    if args.eval_tokens:
        cmd += ["--eval-tokens", args.eval_tokens]
    job = run_job(cmd, timeout=args.timeout, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    error = {"model": f"onnx-{variant}", "error": job.failure() or "exit 0 without a result"}
    rows = read_results(job.stdout) or [error]
    print_row(rows[-1])
    return rows


def run_onnx_comparison(args) -> list[dict]:
    """Both variants, then (with --eval-tokens) the drift of the int8 logits; the rows are also
    written to --json with the machine info."""
    import numpy as np

    args.json_dir = os.path.dirname(os.path.abspath(args.json)) if args.json else os.getcwd()
    os.makedirs(args.json_dir, exist_ok=True)
    rows = []
    for variant in VARIANTS:
        rows += _run_variant(variant, args)
    paths = [os.path.join(args.json_dir, f"logits_{v}.npy") for v in VARIANTS]
    if args.eval_tokens and all(os.path.exists(p) for p in paths):
        drift = logits_drift(*(np.load(p).astype(np.float64) for p in paths))
        rows.append(drift)
        print_row(drift)
        for p in paths:
            os.remove(p)
    if args.json:
        write_json(args.json, machine_info(args), rows)
    return rows
