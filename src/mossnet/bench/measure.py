"""Timing and peak memory of one model over its prompt lengths, in this process: load, warm up,
then per length (ascending) drop the previous cache, reset the peak, prefill, reset the peak
again, decode. Every timed span ends when the device has finished (CUDA: synchronize)."""

from __future__ import annotations

import gc
import os
import statistics
import time

from mossnet.bench.meter import meter_for
from mossnet.bench.runners import Runner, build_runner, cache_bytes
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


def position_note(runner: Runner, ctx: int, n_decode: int) -> str | None:
    """A note for rows whose positions run past what the model was trained for (the teacher at
    16k: its RoPE extrapolates; speed and memory are those of any other length)."""
    limit = runner.max_positions
    if limit is None or ctx + n_decode <= limit:
        return None
    return (f"{ctx} + {n_decode} positions exceed max_position_embeddings={limit}: "
            "RoPE extrapolated (quality would suffer, speed and memory do not)")


def _setup(threads: int) -> None:
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def _warm_up(runner: Runner, ids, meter) -> float:
    """Allocator, lazy init, kernel tuning, the CUDA-graph capture of MossNet's decode step, and
    compilation for mossnet-compiled, on a short prompt. Seconds."""
    t0 = time.perf_counter()
    tok = runner.prefill(ids[:, :WARMUP_TOKENS])
    for _ in range(WARMUP_STEPS):
        tok = runner.decode(tok)
    meter.sync()
    return time.perf_counter() - t0


def _timed(fn, meter):
    """(fn(), milliseconds until the device finished it)."""
    meter.sync()
    t0 = time.perf_counter()
    out = fn()
    meter.sync()
    return out, (time.perf_counter() - t0) * 1e3


def _fresh_cache(runner: Runner) -> None:
    runner.cache = None
    gc.collect()


def time_prompt(runner: Runner, ids, n_decode: int, meter) -> dict:
    """From an empty cache: prefill ``ids``, then ``n_decode`` greedy steps. Memory before the
    prefill, peak memory over prefill + decode and over the decode steps alone, the cache's
    size, prefill time, decode latencies, load average. On CUDA an untimed prefill of the same
    length runs first (kernel choices and the allocator settle per shape)."""
    _fresh_cache(runner)
    if meter.device_type == "cuda":
        runner.prefill(ids)
        _fresh_cache(runner)
        meter.sync()
    row = {meter.before_key: round(meter.current_mb(), 1), "peak_reset": meter.reset_peak()}
    load_avg_start = os.getloadavg()
    tok, row["prefill_ms"] = _timed(lambda: runner.prefill(ids), meter)
    row["prefill_ms"] = round(row["prefill_ms"], 1)
    prefill_peak = meter.peak_mb()
    meter.reset_peak()
    times = []
    for _ in range(n_decode):
        tok, ms = _timed(lambda t=tok: runner.decode(t), meter)
        times.append(ms)
    decode_peak = meter.peak_mb()
    row[meter.peak_key] = round(max(prefill_peak, decode_peak), 1)
    row["decode_" + meter.peak_key] = round(decode_peak, 1)
    size = cache_bytes(runner.cache)
    row["cache_mb"] = None if size is None else round(size / 2**20, 2)
    row["decode_tokens"] = n_decode
    row.update(decode_stats(times))
    row.update(loadavg_start=[round(x, 2) for x in load_avg_start],
               loadavg_end=[round(x, 2) for x in os.getloadavg()])
    return row


def measure(name: str, contexts: list[int], args, emit=None) -> list[dict]:
    """In one process: load the model, warm up, then for each prompt length (ascending): drop
    the previous cache, reset the peak, prefill, decode. Returns one row per length; ``emit``
    (if given) is called with each row as soon as it is measured. ``args.device``: "cpu"
    (default) or a CUDA device."""
    import torch

    _setup(args.threads)
    device = torch.device(getattr(args, "device", "cpu"))
    meter = meter_for(device)
    longest = max(contexts)
    t0 = time.perf_counter()
    runner = build_runner(name, args, device)
    meter.sync()
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1234)
    ids_all = torch.randint(0, runner.vocab_size, (1, longest), generator=gen).to(device)
    dtype = str(next(runner.model.parameters()).dtype).removeprefix("torch.")
    rows = []
    with torch.no_grad():  # as generate() runs
        warmup_s = _warm_up(runner, ids_all, meter)
        for ctx in sorted(contexts):
            n_decode = n_decode_tokens(ctx, args)
            head = {"model": name, "context": ctx, "threads": args.threads, "params": total_parameters(runner.model),
                    **meter.info(), "dtype": dtype, "load_s": round(load_s, 1), "warmup_s": round(warmup_s, 2)}
            row = {**head, **time_prompt(runner, ids_all[:, :ctx], n_decode, meter), **runner.details()}
            note = position_note(runner, ctx, n_decode)
            if note:
                row["note"] = note
            rows.append(row)
            if emit is not None:
                emit(row)
    return rows
