"""Cost against work, from the JSON of ``benchmarks/bench_scaling.py``: the per-token training
cost against sequence length and model size, the "flat in length" check, a table and a plot.

The JSON (``results``) holds ``env`` (card, date, commit, execution policy, ...), ``sweeps``
and ``rows``:

* ``sweeps["length"] = {"size": "base", "lengths": [2048, 8192, 32768]}``: every model at one
  size over the lengths; ``sweeps["size"] = {"seq_len": 2048, "sizes": ["small", ...]}``: every
  model at one length over the sizes. Each step holds the same number of tokens
  (``env["tokens_per_step"]``; batch = tokens / length), so a per-token cost that does not
  move with the length means a cost linear in the length.
* each row is one (model, size, seq_len, path) with ``status`` "ok" (and ``tokens_per_s``,
  ``peak_mem_gb``, ...), "oom" (did not fit the card), "error", "timeout" or "skipped".

The per-token cost of a row is ``1e6 / tokens_per_s`` microseconds. A model's cost is *flat
in length* when, over every length of the length sweep, ``max / min - 1`` of that cost is at
most the tolerance (15% by default). A length that did not run makes the check "incomplete",
never "flat".
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from mossnet.errors import MissingExtraError

FLAT_TOLERANCE = 0.15
# Models whose cost should not grow with the length (the recurrent ones); the others are reported.
RECURRENT_MODELS = ("mossnet", "ssm-1head")


def us_per_token(row: dict) -> float:
    """Training cost of a measured row: microseconds per token."""
    return 1e6 / row["tokens_per_s"]


def measured(row: dict) -> bool:
    return row.get("status") == "ok" and row.get("tokens_per_s", 0) > 0


def _series_keys(rows: list[dict]) -> list[tuple[str, str]]:
    """(model, path) pairs in the order they first appear."""
    return list(dict.fromkeys((r["model"], r["path"]) for r in rows))


def length_series(results: dict, model: str, path: str) -> list[dict]:
    """The length sweep's rows of (model, path), one per length of the sweep, in length order;
    a length with no row at all gets a ``{"status": "missing"}`` placeholder."""
    sweep = results.get("sweeps", {}).get("length")
    if not sweep:
        return []
    by_len = {r["seq_len"]: r for r in results["rows"]
              if r["model"] == model and r["path"] == path and r["size"] == sweep["size"]}
    return [by_len.get(T, {"model": model, "path": path, "seq_len": T, "status": "missing"})
            for T in sorted(sweep["lengths"])]


def size_series(results: dict, model: str, path: str) -> list[dict]:
    """The size sweep's rows of (model, path) in the sweep's size order (missing sizes left out)."""
    sweep = results.get("sweeps", {}).get("size")
    if not sweep:
        return []
    by_size = {r["size"]: r for r in results["rows"]
               if r["model"] == model and r["path"] == path and r["seq_len"] == sweep["seq_len"]}
    return [by_size[s] for s in sweep["sizes"] if s in by_size]


def flatness(series: list[dict], tolerance: float = FLAT_TOLERANCE) -> dict:
    """The flat-in-length verdict of one model's length series (see the module docstring):
    ``lengths``, ``us_per_token`` (None where not measured), ``spread`` = max / min - 1,
    ``growth`` = cost at the longest / cost at the shortest length, and ``verdict``:
    "flat", "not flat" or "incomplete (...)"."""
    lengths = [r["seq_len"] for r in series]
    costs = [us_per_token(r) if measured(r) else None for r in series]
    out = {"lengths": lengths, "us_per_token": costs, "tolerance": tolerance, "spread": None, "growth": None}
    missing = [f"{r['seq_len']}: {r.get('status', 'missing')}" for r in series if not measured(r)]
    if len(series) < 2:
        out["verdict"] = "incomplete (fewer than two lengths)"
    elif missing:
        out["verdict"] = "incomplete (" + ", ".join(missing) + ")"
    else:
        out["spread"] = max(costs) / min(costs) - 1
        out["growth"] = costs[-1] / costs[0]
        out["verdict"] = "flat" if out["spread"] <= tolerance else "not flat"
    return out


def flat_check(results: dict, tolerance: float = FLAT_TOLERANCE) -> list[dict]:
    """One flatness verdict per (model, path) of the length sweep. ``target`` is "flat" for the
    recurrent models (the target) and "report" for attention (whose cost may grow)."""
    sweep = results.get("sweeps", {}).get("length")
    if not sweep:
        return []
    rows = [r for r in results["rows"] if r["size"] == sweep["size"]]
    checks = []
    for model, path in _series_keys(rows):
        check = {"model": model, "size": sweep["size"], "path": path,
                 "target": "flat" if model in RECURRENT_MODELS else "report"}
        check.update(flatness(length_series(results, model, path), tolerance))
        checks.append(check)
    return checks


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def launch_cells(launches: dict | None) -> tuple[str, str]:
    """(kernels per step, host launches per step) of a row's launch count: on CUDA the device's
    kernels and the host's kernel + graph launches; on the CPU the compute operators, and "-"."""
    if not launches:
        return "-", "-"
    if launches.get("device") == "cuda":
        host = launches["host_launches"] + launches["graph_launches"]
        return f"{launches['device_kernels']:,.0f}", f"{host:,.0f}"
    return f"{launches['cpu_ops']:,.0f} CPU ops", "-"


def _row_cells(r: dict) -> str:
    if not measured(r):
        why = r.get("status", "missing") + (f": {r['error'][:70]}" if r.get("error") else "")
        return (f"| {r['model']} | {r.get('size', '-')} | {r['seq_len']} | {r.get('batch', '-')} | {r['path']} "
                f"| {why} | | | | | |")
    kernels, host = launch_cells(r.get("launches"))
    return (f"| {r['model']} | {r['size']} | {r['seq_len']} | {r['batch']} | {r['path']} | "
            f"{r['tokens_per_s']:,.0f} | {us_per_token(r):.3f} | {_fmt(r.get('peak_mem_gb'), '.2f')} | "
            f"{100 * r['mfu']:.1f}% | {kernels} | {host} |")


def run_line(env: dict) -> str:
    """Card, date, commit and tokens per step of a run: the line every table and plot carries."""
    tokens = env.get("tokens_per_step")
    return (f"card: {env.get('card', '?')}; date {env.get('date', '?')}; commit {env.get('commit') or 'unknown'}; "
            f"{f'{tokens:,}' if tokens else '?'} tokens per step")


def markdown_table(results: dict) -> str:
    """Every row (in run order), then the flat-in-length verdicts."""
    lines = [run_line(results.get("env", {})), "",
             "| model | size | seq len | batch | path | tokens/s | µs/token | peak mem GB | MFU | kernels/step "
             "| host launches/step |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [_row_cells(r) for r in results.get("rows", [])]
    checks = results.get("flat_check") or flat_check(results)
    if checks:
        lines += ["", "| per-token cost over the lengths | path | µs/token by length | max/min - 1 | verdict |",
                  "| --- | --- | --- | ---: | --- |"]
        for c in checks:
            costs = ", ".join(f"{T}: {_fmt(u, '.3f')}" for T, u in zip(c["lengths"], c["us_per_token"]))
            spread = _fmt(None if c["spread"] is None else 100 * c["spread"], ".1f")
            verdict = c["verdict"] if c["target"] == "flat" else f"{c['verdict']} (reported, no target)"
            lines.append(f"| {c['model']}-{c['size']} | {c['path']} | {costs} | {spread}% | {verdict} |")
    return "\n".join(lines)


def plot_scaling(results: dict, path: str | Path) -> None:
    """PNG, two rows of panels: per-token cost (µs/token) and peak memory (GB), against sequence
    length (length sweep, log2 axis) and against total parameters (size sweep, log axis); one
    line per (model, path). Needs matplotlib (``mossnet[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("the scaling plot", "plot", "matplotlib") from None
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), squeeze=False)
    sweeps = results.get("sweeps", {})
    for model, run_path in _series_keys(results.get("rows", [])):
        label = f"{model} ({run_path})"
        by_len = [r for r in length_series(results, model, run_path) if measured(r)]
        if by_len:
            x = [r["seq_len"] for r in by_len]
            axes[0][0].plot(x, [us_per_token(r) for r in by_len], marker="o", label=label)
            axes[1][0].plot(x, [r.get("peak_mem_gb") or 0 for r in by_len], marker="o", label=label)
        by_size = [r for r in size_series(results, model, run_path) if measured(r)]
        if by_size:
            x = [r["params_total"] / 1e6 for r in by_size]
            for i, y in enumerate(([us_per_token(r) for r in by_size], [r.get("peak_mem_gb") or 0 for r in by_size])):
                line, = axes[i][1].plot(x, y, marker="o", label=label)
                for xi, yi, r in zip(x, y, by_size):
                    axes[i][1].annotate(r["size"], (xi, yi), fontsize=7, color=line.get_color(),
                                        xytext=(3, 3), textcoords="offset points")
    length_sweep, size_sweep = sweeps.get("length", {}), sweeps.get("size", {})
    memory = next((r.get("peak_mem_what") for r in results.get("rows", []) if r.get("peak_mem_what")), "peak memory")
    titles = [[f"training cost per token vs length ({length_sweep.get('size', '?')})",
               f"training cost per token vs size (T={size_sweep.get('seq_len', '?')})"],
              [f"{memory} vs length", f"{memory} vs size"]]
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.set_title(titles[i][j], fontsize=10)
            ax.set_xscale("log", base=2 if j == 0 else 10)
            if j == 0 and length_sweep.get("lengths"):  # tick exactly the measured lengths
                ax.xaxis.set_major_locator(FixedLocator(sorted(length_sweep["lengths"])))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_major_formatter(lambda v, _pos: f"{int(v):,}")
            ax.set_xlabel("sequence length (tokens)" if j == 0 else "total parameters (M)")
            ax.set_ylabel("µs per token" if i == 0 else "GB")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.suptitle(run_line(results.get("env", {})), fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rows_by_status(results: dict) -> dict[str, int]:
    """How many rows ended in each status (the run's one-line summary)."""
    counts: dict[str, int] = defaultdict(int)
    for r in results.get("rows", []):
        counts[r.get("status", "missing")] += 1
    return dict(counts)
