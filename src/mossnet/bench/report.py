"""What the benchmark writes out: each row as a JSON line while it runs, the machine it ran on,
a Markdown table, the JSON file (machine + rows) and a latency / memory vs context plot."""

from __future__ import annotations

import datetime
import json
import os
import sys


def print_row(row: dict) -> None:
    print(json.dumps(row), flush=True)


def machine_info(args) -> dict:
    """The machine (``mossnet.runtime.machine_info``), the date, the threads and the command."""
    from mossnet.runtime import machine_info as describe_machine

    machine = describe_machine()
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": machine["cpu"], "cores": machine["cpu_count"], "memory_gb": machine["memory_gb"],
        "threads": args.threads, "python": machine["python"], "torch": machine["torch"],
        "transformers": machine["transformers"],
        "command": "mossnet bench --device cpu " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
    }


def write_json(path: str, info: dict, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": info, "results": rows}, f, indent=1)


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | context | prefill ms | decode ms median | decode ms p90 | decode tokens | peak RSS MB "
            "| RSS before prefill MB | load avg (1 min) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['context']} | {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['context']} | {r['prefill_ms']:.0f} | {r['decode_ms_median']:.1f} | "
            f"{r['decode_ms_p90']:.1f} | {r['decode_tokens']} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | "
            f"{r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Decode latency, prefill time and peak RSS against context length, one line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == name and "error" not in r]
        if not ok:
            continue
        ctx = [r["context"] for r in ok]
        axes[0].plot(ctx, [r["decode_ms_median"] for r in ok], marker="o", label=name)
        axes[1].plot(ctx, [r["prefill_ms"] / 1e3 for r in ok], marker="o", label=name)
        axes[2].plot(ctx, [r["peak_rss_mb"] for r in ok], marker="o", label=name)
    titles = ("decode latency per token (median, ms)", "prefill time (s)", "peak RSS (MB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], info: dict, args) -> None:
    """After the runs: the Markdown table (--markdown), the JSON file (--json), the plot (--plot),
    and the total time."""
    if args.markdown:
        print(markdown_table(rows))
    if args.json:
        write_json(args.json, info, rows)
    if args.plot:
        plot(rows, args.plot)
    print(f"total {info['total_s']} s", flush=True)
