#!/usr/bin/env python
"""Tables and plots for RESULTS.md from the SmolLM2 distillation study's summary JSON.

    python scripts/smollm2_report.py benchmarks/results/smollm2_distill_h100.json --plots docs/results

Prints the Markdown tables (tasks with chance-normalised recovery, probes, samples, budgets) and
writes smollm2_recovery.png, smollm2_layer_errors.png and smollm2_curves.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (task, metric, chance, label): acc_norm where lm-eval reports it, acc otherwise (issue's choice)
TASKS = (
    ("offline_hellaswag", "acc_norm", 0.25, "HellaSwag"),
    ("offline_arc_easy", "acc_norm", 0.25, "ARC-Easy"),
    ("offline_arc_challenge", "acc_norm", 0.25, "ARC-Challenge"),
    ("offline_piqa", "acc_norm", 0.5, "PIQA"),
    ("offline_winogrande", "acc", 0.5, "WinoGrande"),
    ("offline_lambada", "acc", 0.0, "LAMBADA"),
)
ARMS = ("dense", "routed")


def recovery(student: float, teacher: float, chance: float) -> float | None:
    """(student - chance) / (teacher - chance); None when the teacher is within a point of chance."""
    return None if teacher - chance < 0.01 else (student - chance) / (teacher - chance)


def task_table(models: dict) -> str:
    rows = ["| task (metric) | chance | teacher | dense | routed | recovery dense | recovery routed |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for task, metric, chance, label in TASKS:
        t = models["teacher"]["tasks"][task][metric]
        cells = [f"{100 * models[a]['tasks'][task][metric]:.2f}" for a in ARMS]
        rec = [recovery(models[a]["tasks"][task][metric], t, chance) for a in ARMS]
        rec_cells = ["n/a (teacher at chance)" if r is None else f"{r:.2f}" for r in rec]
        rows.append(f"| {label} ({metric}) | {100 * chance:.0f} | {100 * t:.2f} | {' | '.join(cells)} | "
                    f"{' | '.join(rec_cells)} |")
    averages = {name: 100 * sum(models[name]["tasks"][task][metric] for task, metric, _, _ in TASKS) / len(TASKS)
                for name in ("teacher", *ARMS)}
    rows.append(f"| **average of the six** | | **{averages['teacher']:.2f}** | **{averages['dense']:.2f}** | "
                f"**{averages['routed']:.2f}** | gap {averages['teacher'] - averages['dense']:.2f} pts | "
                f"gap {averages['teacher'] - averages['routed']:.2f} pts |")
    ppl = [models[n]["tasks"]["offline_lambada"]["perplexity"] for n in ("teacher", *ARMS)]
    rows.append(f"| LAMBADA perplexity | | {ppl[0]:.1f} | {ppl[1]:.1f} | {ppl[2]:.1f} | | |")
    return "\n".join(rows)


def probe_table(models: dict) -> str:
    rows = ["| measure | teacher | dense | routed |", "|---|---:|---:|---:|"]
    names = ("teacher", *ARMS)
    held = [models[n]["held_out"] for n in names]
    rows.append("| held-out perplexity (test split, 259k tokens) | " + " | ".join(f"{h['perplexity']:.2f}" for h in held) + " |")
    rows.append("| held-out bits per byte | " + " | ".join(f"{h['bits_per_byte']:.3f}" for h in held) + " |")
    rep = [models[n]["repeated_passage"] for n in names]
    rows.append("| repeated passage: loss on the first copy (nats) | " + " | ".join(f"{r['first_copy_loss']:.3f}" for r in rep) + " |")
    rows.append("| repeated passage: loss on the second copy (nats) | " + " | ".join(f"{r['second_copy_loss']:.3f}" for r in rep) + " |")
    for length in models["teacher"]["passkey"]:
        cells = [f"{models[n]['passkey'][length]['accuracy']:.0%} of {models[n]['passkey'][length]['trials']}" for n in names]
        rows.append(f"| passkey at {int(length) // 1024}k tokens | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def samples_block(models: dict) -> str:
    out = []
    for i, first in enumerate(models["teacher"]["samples"]):
        out.append(f"**Prompt:** `{first['prompt']}`\n")
        for name in ("teacher", *ARMS):
            text = models[name]["samples"][i]["greedy"].replace("\n", " ⏎ ").strip()
            out.append(f"- *{name}*: {text}")
        out.append("")
    return "\n".join(out)


def plots(summary: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, folder = summary["models"], Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.38
    for k, arm in enumerate(ARMS):
        values = []
        for task, metric, chance, _ in TASKS:
            r = recovery(models[arm]["tasks"][task][metric], models["teacher"]["tasks"][task][metric], chance)
            values.append(float("nan") if r is None else r)
        ax.bar([i + (k - 0.5) * width for i in range(len(TASKS))], values, width, label=arm)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(TASKS)), [label for *_, label in TASKS])
    ax.set_ylabel("(student - chance) / (teacher - chance)")
    ax.set_title("Recovery of SmolLM2-135M-Instruct's zero-shot accuracy (WinoGrande: teacher at chance)")
    ax.set_ylim(-0.2, 1.1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "smollm2_recovery.png", dpi=110)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for arm, color in zip(ARMS, ("tab:blue", "tab:orange")):
        for stage, style in (("step0", ":"), ("attention", "--"), ("", "-")):
            key = f"{arm}-{stage}" if stage else arm
            errors = models.get(key, {}).get("layer_errors")
            if errors:
                label = {"step0": "after convert", "attention": "after stage attention", "": "after stage logits"}[stage]
                ax.plot(range(len(errors)), errors, style, color=color, label=f"{arm}, {label}")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative error of the mixer vs attention")
    ax.set_ylim(0, None)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Per-layer error on held-out text, each layer on the teacher's own inputs")
    fig.tight_layout()
    fig.savefig(folder / "smollm2_layer_errors.png", dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, stage in zip(axes, ("attention", "logits")):
        for arm in ARMS:
            curve = [p for p in summary["runs"].get(f"{arm}-{stage}", {}).get("curve", []) if "tokens_per_s" in p]
            ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label=arm)
        ax.set_xlabel("step (16,384 tokens each)")
        ax.set_ylabel("sum of per-layer relative MSE" if stage == "attention" else "KL(teacher || student), nats")
        ax.set_yscale("log")
        ax.set_title(f"stage {stage}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "smollm2_curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary")
    parser.add_argument("--plots", default=None, help="folder for the PNG plots")
    args = parser.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    models = summary["models"]
    print(task_table(models), end="\n\n")
    print(probe_table(models), end="\n\n")
    print(samples_block(models))
    for name in ("teacher", *ARMS):
        print(name, "tasks check:" if "tasks_check" in models[name] else "", models[name].get("timings"))
    print("timings (s):", summary["timings"])
    if args.plots:
        plots(summary, Path(args.plots))


if __name__ == "__main__":
    main()
