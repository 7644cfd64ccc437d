"""The CPU comparison: every model over every prompt length (the recurrent ones also over the
extra, longer lengths), each in its own process unless ``--in-process``, then the report."""

from __future__ import annotations

import time

from mossnet.bench.isolated import run_model
from mossnet.bench.measure import measure
from mossnet.bench.report import machine_info, print_row, write_report
from mossnet.bench.runners import RECURRENT_MODELS


def measure_all(models: list[str], contexts: list[int], extra: list[int], args) -> list[dict]:
    """The rows of every model in turn, each printed as a JSON line as it arrives."""
    rows = []
    for name in models:
        lengths = contexts + (extra if name in RECURRENT_MODELS else [])
        if args.in_process:
            rows += measure(name, lengths, args, emit=print_row)
        else:
            rows += run_model(name, lengths, args)
    return rows


def run_suite(models: list[str], contexts: list[int], extra: list[int], args) -> list[dict]:
    """Measure, then write the table / JSON / plot that ``args`` asks for. Returns the rows
    (an ``error`` key marks a (model, length) that failed)."""
    start = time.perf_counter()
    rows = measure_all(models, contexts, extra, args)
    info = machine_info(args, rows)
    info["total_s"] = round(time.perf_counter() - start, 1)
    write_report(rows, info, args)
    return rows
