#!/usr/bin/env python
"""Peak memory of ``generate`` against prompt length: a long prompt must not cost more memory
than a short one (the prompt is prefilled in blocks of ``config.prefill_block_size`` tokens and
only the last position's logits are computed).

Each (preset, prompt length) runs in its own process, so peaks do not mix. A worker builds the
model with random weights, runs a short warm-up generation, resets the peak resident memory
(Linux ``VmHWM``), then greedily generates ``--new-tokens`` tokens after a random prompt of the
given length and reports the peak resident memory of that call (the whole process: Python,
torch, the weights and the generation).

Usage:
    python benchmarks/bench_long_prompt.py                              # tiny and base, 2k and 40k
    python benchmarks/bench_long_prompt.py --presets tiny --lengths 2048,8192 --n-layers 1
    python benchmarks/bench_long_prompt.py --prefill-block 0            # one-pass prefill, to compare
Prints a markdown table; ``--json PATH`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def int_list(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",") if part]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,base", help="comma-separated MossNet presets (default tiny,base)")
    p.add_argument("--lengths", type=int_list, default=[2048, 40960],
                   help="prompt lengths in tokens (default 2048,40960)")
    p.add_argument("--new-tokens", type=positive_int, default=4, help="tokens generated after the prompt (default 4)")
    p.add_argument("--n-layers", type=positive_int, default=None,
                   help="override the preset's layer count (faster runs)")
    p.add_argument("--prefill-block", type=nonnegative_int, default=None,
                   help="override config.prefill_block_size (0 = one-pass prefill; default: the config's)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--timeout", type=positive_int, default=1800, help="seconds per worker (default 1800)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--length", type=positive_int, default=2048, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------- one measurement (worker)
def build_model(preset: str, n_layers: int | None, prefill_block: int | None):
    from mossnet import MossNetConfig, MossNetForCausalLM

    overrides = {} if n_layers is None else {"n_layers": n_layers}
    if prefill_block is not None:
        overrides["prefill_block_size"] = prefill_block
    return MossNetForCausalLM(MossNetConfig.from_preset(preset, **overrides)).eval()


def measure(args) -> dict:
    """Peak resident memory (MB) of one greedy ``generate`` after a random prompt."""
    import gc

    import torch

    from mossnet.bench.memory import peak_rss_mb, reset_peak_rss, rss_mb

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.preset, args.n_layers, args.prefill_block)
    vocab = model.config.vocab_size
    with torch.no_grad():  # warm-up: lazy allocations and library state, outside the measured peak
        model.generate(torch.randint(0, vocab, (1, 64)), max_new_tokens=2, do_sample=False)
    gc.collect()
    ids = torch.randint(0, vocab, (1, args.length))
    before = rss_mb()
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    assert out.shape[1] == args.length + args.new_tokens
    return {
        "preset": args.preset, "length": args.length, "n_layers": model.config.n_layers,
        # 0 = one pass; a checkout from before block prefill has no such field (one pass too)
        "prefill_block": getattr(model.config, "prefill_block_size", 0), "new_tokens": args.new_tokens,
        "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_is_since_start": not reset_ok, "seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------- parent
def worker_command(args, preset: str, length: int) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--preset", preset, "--length", str(length),
           "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    if args.n_layers is not None:
        cmd += ["--n-layers", str(args.n_layers)]
    if args.prefill_block is not None:
        cmd += ["--prefill-block", str(args.prefill_block)]
    return cmd


def run_worker(args, preset: str, length: int) -> dict:
    """One measurement in a fresh process; an ``error`` row if it failed."""
    from mossnet.isolated_jobs import read_results, run_job

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    job = run_job(worker_command(args, preset, length), env=env, timeout=args.timeout)
    rows = read_results(job.stdout)
    if rows:
        return rows[0]
    return {"preset": preset, "length": length, "error": job.failure() or "exit 0 without a result"}


def print_table(rows: list[dict]) -> None:
    print("| preset | layers | prompt tokens | prefill block | RSS before MB | peak RSS MB "
          "| peak / shortest prompt's | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    shortest: dict[str, float] = {}
    for row in rows:
        if "error" in row:
            print(f"| {row['preset']} | | {row['length']} | | | {row['error']} | | |")
            continue
        ref = shortest.setdefault(row["preset"], row["peak_rss_mb"])
        print(f"| {row['preset']} | {row['n_layers']} | {row['length']} | {row['prefill_block'] or 'one pass'} "
              f"| {row['rss_before_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] / ref:.3f} "
              f"| {row['seconds']:.1f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        from mossnet.isolated_jobs import emit_result

        emit_result(measure(args))
        return 0
    rows = []
    for preset in [p for p in args.presets.split(",") if p]:
        for length in sorted(args.lengths):
            rows.append(run_worker(args, preset, length))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"python {platform.python_version()}; threads per worker {args.threads}")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
