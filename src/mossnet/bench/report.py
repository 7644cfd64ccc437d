"""What the benchmark writes out: each row as a JSON line while it runs, the machine it ran on,
a Markdown table, the JSON file (machine + rows) and a latency / memory vs context plot."""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path


def print_row(row: dict) -> None:
    print(json.dumps(row), flush=True)


def machine_info(args, rows: list[dict] | None = None) -> dict:
    """The machine (``mossnet.runtime.machine_info``), the date, the threads and the command; on
    CUDA also the GPU the workers reported."""
    from mossnet.runtime import machine_info as describe_machine

    machine = describe_machine()
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": machine["cpu"], "cores": machine["cpu_count"], "memory_gb": machine["memory_gb"],
        "threads": args.threads, "device": getattr(args, "device", "cpu"), "python": machine["python"],
        "torch": machine["torch"], "transformers": machine["transformers"],
        "command": "mossnet bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
    }
    for key in ("gpu", "cuda"):  # read in the workers: the parent never initialises CUDA
        found = next((r[key] for r in rows or [] if key in r), None)
        if found is not None:
            info[key] = found
    return info


def write_json(path: str, info: dict, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": info, "results": rows}, f, indent=1)


def _memory_keys(rows: list[dict]) -> tuple[str, str, str]:
    """(peak key, before-prefill key, the memory's label) by the rows' device: resident memory
    on the CPU, allocated tensor memory on CUDA."""
    if any(r.get("device", "cpu") == "cuda" for r in rows):
        return "peak_alloc_mb", "alloc_before_mb", "allocated"
    return "peak_rss_mb", "rss_before_mb", "RSS"


def _number(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown_table(rows: list[dict]) -> str:
    """One line per row; rows with a note (the teacher past its trained positions) are marked
    with a dagger and the notes follow the table."""
    peak, before, unit = _memory_keys(rows)
    head = (f"| model | context | prefill ms | decode ms median | decode ms p90 | decode tokens | peak {unit} MB "
            f"| decode peak {unit} MB | {unit} before prefill MB | cache MB | load avg (1 min) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['context']} | {r['error']} | | | | | | | | |")
            continue
        mark = " †" if r.get("note") else ""
        lines.append(
            f"| {r['model']}{_path_label(r)} | {r['context']}{mark} | {r['prefill_ms']:.0f} | "
            f"{r['decode_ms_median']:.2f} | {r['decode_ms_p90']:.2f} | {r['decode_tokens']} | {r[peak]:.0f} | "
            f"{_number(r.get('decode_' + peak), '.0f')} | {_number(r.get(before), '.0f')} | "
            f"{_number(r.get('cache_mb'), '.1f')} | {r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f} |"
        )
    notes = note_lines(rows)
    return "\n".join(lines + ([""] + notes if notes else []))


def note_lines(rows: list[dict]) -> list[str]:
    """"† MODEL at CONTEXT: NOTE" for every row with a note."""
    return [f"† {r['model']} at {r['context']}: {r['note']}" for r in rows if r.get("note")]


def _path_label(row: dict) -> str:
    """MossNet's decode path on CUDA ("cuda-graph" / "eager"), shown beside its name."""
    path = row.get("decode_path")
    return f" ({path})" if path and row.get("device") == "cuda" else ""


def plot(rows: list[dict], path: str) -> None:
    """Decode latency, prefill time and peak RSS against context length, one line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak, _, unit = _memory_keys(rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == name and "error" not in r]
        if not ok:
            continue
        ctx = [r["context"] for r in ok]
        axes[0].plot(ctx, [r["decode_ms_median"] for r in ok], marker="o", label=name)
        axes[1].plot(ctx, [r["prefill_ms"] / 1e3 for r in ok], marker="o", label=name)
        axes[2].plot(ctx, [r[peak] for r in ok], marker="o", label=name)
    titles = ("decode latency per token (median, ms)", "prefill time (s)", f"peak {unit} (MB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], info: dict, args) -> None:
    """After the runs: the Markdown table (--markdown), the JSON file (--json), the plot (--plot),
    and the total time."""
    if args.markdown:
        print(markdown_table(rows))
    else:
        for line in note_lines(rows):
            print(line)
    if args.json:
        write_json(args.json, info, rows)
    if args.plot:
        plot(rows, args.plot)
    print(f"total {info['total_s']} s", flush=True)
