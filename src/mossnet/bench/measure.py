"""Timing and peak memory of one model over its prompt lengths, in this process: load, warm up,
then per length (ascending) drop the previous cache, reset the peak, prefill, decode."""

from __future__ import annotations

import gc
import os
import statistics
import time

from mossnet.bench.memory import peak_rss_mb, reset_peak_rss, rss_mb
from mossnet.bench.runners import Runner, build_runner
from mossnet.models.parameter_count import total_parameters

WARMUP_TOKENS = 16  # prompt length of the warm-up prefill
WARMUP_STEPS = 3  # decode steps after it


def decode_stats(times_ms: list[float]) -> dict:
    """Median and p90 of per-token decode latencies (ms), rounded to 0.01 ms."""
    times = sorted(times_ms)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"decode_ms_median": round(statistics.median(times), 2), "decode_ms_p90": round(p90, 2)}


def n_decode_tokens(ctx: int, args) -> int:
    """Decode steps timed after a prompt of ``ctx`` tokens (fewer for long prompts)."""
    return args.long_decode_tokens if ctx >= args.long_from else args.decode_tokens


def _setup(threads: int) -> None:
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def _warm_up(runner: Runner, ids) -> float:
    """Allocator, lazy init, and compilation for mossnet-compiled, on a short prompt. Seconds."""
    t0 = time.perf_counter()
    tok = runner.prefill(ids[:, :WARMUP_TOKENS])
    for _ in range(WARMUP_STEPS):
        tok = runner.decode(tok)
    return time.perf_counter() - t0


def time_prompt(runner: Runner, ids, n_decode: int) -> dict:
    """From an empty cache: prefill ``ids``, then ``n_decode`` greedy steps. Memory before the
    prefill, peak memory over prefill + decode, prefill time, decode latencies, load average."""
    runner.cache = None
    gc.collect()
    row = {"rss_before_mb": round(rss_mb(), 1), "peak_reset": reset_peak_rss()}
    load_avg_start = os.getloadavg()
    t0 = time.perf_counter()
    tok = runner.prefill(ids)
    row["prefill_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    times = []
    for _ in range(n_decode):
        t0 = time.perf_counter()
        tok = runner.decode(tok)
        times.append((time.perf_counter() - t0) * 1e3)
    row["peak_rss_mb"] = round(peak_rss_mb(), 1)
    row["decode_tokens"] = n_decode
    row.update(decode_stats(times))
    row.update(loadavg_start=[round(x, 2) for x in load_avg_start],
               loadavg_end=[round(x, 2) for x in os.getloadavg()])
    return row


def measure(name: str, contexts: list[int], args, emit=None) -> list[dict]:
    """In one process: load the model, warm up, then for each prompt length (ascending): drop
    the previous cache, reset the peak, prefill, decode. Returns one row per length; ``emit``
    (if given) is called with each row as soon as it is measured."""
    import torch

    _setup(args.threads)
    longest = max(contexts)
    t0 = time.perf_counter()
    runner = build_runner(name, args, longest, n_decode_tokens(longest, args))
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1234)
    ids_all = torch.randint(0, runner.vocab_size, (1, longest), generator=gen)
    rows = []
    with torch.inference_mode():
        warmup_s = _warm_up(runner, ids_all)
        for ctx in sorted(contexts):
            head = {"model": name, "context": ctx, "threads": args.threads, "params": total_parameters(runner.model),
                    "load_s": round(load_s, 1), "warmup_s": round(warmup_s, 2)}
            row = {**head, **time_prompt(runner, ids_all[:, :ctx], n_decode_tokens(ctx, args))}
            rows.append(row)
            if emit is not None:
                emit(row)
    return rows
