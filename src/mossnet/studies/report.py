"""Tables (Markdown) and plots (PNG) of the studies' result JSONs.

Spread over seeds is written ``mean ± h`` with ``h`` half the range (max - min) / 2: with two
seeds that is the honest summary (a standard deviation of two numbers says no more). The reports
planned for three seeds (paired differences, decomposition, MQAR gate and ranking) are in
``report_paired``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable


def _mean_spread(values: Iterable[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2, len(vals)


def _fmt_pm(mean: float, spread: float, digits: int = 3, n: int = 2) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if n < 2:
        return f"{mean:.{digits}f}"  # one seed: no spread to show
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def group_lm(results: list[dict[str, Any]]) -> "OrderedDict[str, list[dict[str, Any]]]":
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in results:
        groups.setdefault(r["variant"], []).append(r)
    return groups


def lm_table(results: list[dict[str, Any]]) -> str:
    """One row per variant: parameters, state, validation loss / perplexity / bits-per-byte
    (mean ± half-range over seeds), training tokens/s."""
    groups = group_lm(results)
    lines = [
        "| model | active params | total params | state / layer | val loss | perplexity | bits/byte | tokens/s | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, runs in groups.items():
        p = runs[0]["params"]
        if all(r.get("diverged") for r in runs):
            lines.append(f"| {runs[0]['label']} | {_millions(p['active'])} | {_millions(p['total'])} | | diverged | "
                         f"| | | {len(runs)} |")
            continue
        loss = _mean_spread(r["val_loss"] for r in runs)
        ppl = _mean_spread(r["val_perplexity"] for r in runs)
        bpb = _mean_spread(r["val_bits_per_byte"] for r in runs)
        tps = _mean_spread(r["tokens_per_s"] for r in runs)
        state = _bytes(p["state_bytes_per_layer"]) + (f" (KV @ {runs[0]['seq_len']})" if p["state_kind"] == "kv_cache" else "")
        lines.append(
            f"| {runs[0]['label']} | {_millions(p['active'])} | {_millions(p['total'])} | {state} | "
            f"{_fmt_pm(*loss[:2], n=loss[2])} | {_fmt_pm(*ppl[:2], digits=1, n=loss[2])} | "
            f"{_fmt_pm(*bpb[:2], n=loss[2])} | {tps[0]:,.0f} | {loss[2]} |"
        )
    bigram = next((r["bigram"] for r in results if r.get("bigram")), None)
    if bigram:
        lines.append(f"| bigram baseline (fit on train) | | | | {bigram['loss']:.3f} | {bigram['perplexity']:.1f} | "
                     f"{bigram['bits_per_byte']:.3f} | | |")
    return "\n".join(lines)


def lm_sweep_table(results: list[dict[str, Any]], reference_lr: float) -> str:
    """The learning-rate sweep: one row per variant, its final validation loss at each learning
    rate (mean over the seeds every rate was run on, normally seed 0 alone), the best in bold; and
    each variant's best rate. Empty when only one rate was run."""
    lrs = sorted({r["lr"] for r in results})
    if len(lrs) < 2:
        return ""
    swept = {r["seed"] for r in results if r["lr"] != reference_lr}
    rows = []
    for _, runs in group_lm(results).items():
        losses: dict[float, float | None] = {}
        for lr in lrs:
            at = [r for r in runs if r["lr"] == lr and r["seed"] in swept]
            if at:
                vals = [r["val_loss"] for r in at if not r.get("diverged") and r.get("val_loss") is not None]
                losses[lr] = sum(vals) / len(vals) if len(vals) == len(at) else None  # None: diverged
        finite = {lr: v for lr, v in losses.items() if v is not None}
        # a model run at one rate only (not swept): its loss is shown, but no rate is "best"
        best = min(finite, key=finite.get) if finite and len(losses) > 1 else None
        cells = []
        for lr in lrs:
            if lr not in losses:
                cells.append("")
            elif losses[lr] is None:
                cells.append("diverged")
            else:
                cells.append(f"**{losses[lr]:.3f}**" if lr == best else f"{losses[lr]:.3f}")
        best_text = f"{best:g} ({finite[best]:.3f})" if best is not None else ("not swept" if finite else "n/a")
        rows.append((finite[best] if best is not None else min(finite.values(), default=math.inf), f"| {runs[0]['label']} | " + " | ".join(cells) + f" | {best_text} |"))
    seeds = ", ".join(str(s) for s in sorted(swept))
    head = [f"Learning-rate sweep: final validation loss, seed{'s' if len(swept) > 1 else ''} {seeds} "
            f"(the shared rate is {reference_lr:g}); rows ordered by their best loss.", "",
            "| model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr (loss) |",
            "|---|" + "---:|" * len(lrs) + "---:|"]
    return "\n".join(head + [row for _, row in sorted(rows, key=lambda x: x[0])])


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_lm(results: list[dict[str, Any]], path: str | Path, title: str = "") -> str | None:
    """Validation loss against training tokens, one line per variant (mean over seeds, band =
    min..max). Returns a note when no plot could be written."""
    plt = _pyplot()
    if plt is None:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=120)
    for variant, runs in group_lm(results).items():
        # The intermediate points score a validation subset, the final one the whole split (a
        # different mix of documents, so a different level): the final score is drawn apart.
        curves = [dict((int(t), l) for t, l in _intermediate(r)) for r in runs]
        tokens = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not tokens:
            continue
        mean = [sum(c[t] for c in curves) / len(curves) for t in tokens]
        lo = [min(c[t] for c in curves) for t in tokens]
        hi = [max(c[t] for c in curves) for t in tokens]
        line, = ax.plot(tokens, mean, "o-", ms=3, lw=1.5, label=runs[0]["label"])
        if len(curves) > 1:
            ax.fill_between(tokens, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        finals = [r["val_loss"] for r in runs if r.get("val_loss") is not None]
        if finals:
            ax.plot([runs[0]["tokens"]], [sum(finals) / len(finals)], "*", ms=9, color=line.get_color())
    bigram = next((r["bigram"] for r in results if r.get("bigram")), None)
    if bigram:
        ax.axhline(bigram["loss"], color="gray", ls="--", lw=1, label=f"bigram ({bigram['loss']:.2f})")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title(title or "validation loss (mean over seeds; band = min..max)")
    ax.plot([], [], "*", ms=9, color="black", label="final score, whole validation split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, plt)
    return None


def _intermediate(run: dict[str, Any]) -> list:
    """The validation curve without its last point when that point is the final whole-split score."""
    curve = run["val_curve"]
    if len(curve) > 1 and run.get("val_loss") is not None and curve[-1][1] == run["val_loss"]:
        return curve[:-1]
    return curve


def _save(fig, path, plt) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------- MQAR
def mqar_cells(results: list[dict[str, Any]]) -> "OrderedDict[tuple, dict[str, Any]]":
    """(arch, d_model, num_pairs) -> the best learning rate's numbers (accuracy averaged over
    seeds first), with every learning rate's accuracy kept in ``by_lr``."""
    by_lr: OrderedDict[tuple, dict[float, list[float]]] = OrderedDict()
    info: dict[tuple, dict[str, Any]] = {}
    for r in results:
        key = (r["arch"], r["d_model"], r["num_pairs"])
        by_lr.setdefault(key, {}).setdefault(r["lr"], []).append(r["accuracy"])
        info.setdefault(key, r)
    cells: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
    for key, lrs in by_lr.items():
        means = {lr: sum(a) / len(a) for lr, a in lrs.items()}
        best = max(means, key=lambda lr: means[lr])
        cells[key] = {"accuracy": means[best], "best_lr": best, "by_lr": means, "params": info[key]["params"],
                      "seeds": len(lrs[best])}
    return cells


def mqar_table(results: list[dict[str, Any]]) -> str:
    from .arch_configs import LABELS

    cells = mqar_cells(results)
    pairs = sorted({k[2] for k in cells})
    rows: OrderedDict[tuple, dict[int, dict[str, Any]]] = OrderedDict()
    for (arch, d, n), c in cells.items():
        rows.setdefault((arch, d), {})[n] = c
    head = "| model | d_model | active params | state / layer | " + " | ".join(f"{n} pairs" for n in pairs) + " |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(pairs)]
    seq = results[0]["seq_len"] if results else 0
    for (arch, d), by_n in rows.items():
        p = next(iter(by_n.values()))["params"]
        state = _bytes(p["state_bytes_per_layer"]) + (f" (KV @ {seq})" if p["state_kind"] == "kv_cache" else "")
        accs = " | ".join(f"{by_n[n]['accuracy']:.3f} (lr {by_n[n]['best_lr']:g})" if n in by_n else "" for n in pairs)
        lines.append(f"| {LABELS.get(arch, arch)} | {d} | {_millions(p['active'])} | {state} | {accs} |")
    return "\n".join(lines)


def plot_mqar(results: list[dict[str, Any]], path: str | Path) -> str | None:
    """Left: accuracy against the number of pairs (solid: the largest width, dashed: the others).
    Middle: accuracy against recurrent-state bytes per layer, for the largest number of pairs.
    Right: training loss on the queries against examples seen, for the largest width and number
    of pairs at each architecture's best learning rate (ln of the number of pairs = the plateau
    of a model that copies *some* value of the context)."""
    from .arch_configs import LABELS

    plt = _pyplot()
    if plt is None:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    cells = mqar_cells(results)
    if not cells:
        return "no MQAR results"
    widths = sorted({k[1] for k in cells})
    archs = list(OrderedDict.fromkeys(k[0] for k in cells))
    hardest = max(k[2] for k in cells)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.4), dpi=120)
    runs = {(r["arch"], r["d_model"], r["num_pairs"], r["lr"]): r for r in results if r.get("seed", 0) == min(
        x.get("seed", 0) for x in results)}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>ph"
    for i, arch in enumerate(archs):
        color = colors[i % len(colors)]
        for j, d in enumerate(widths):
            pts = sorted((n, c["accuracy"]) for (a, dd, n), c in cells.items() if a == arch and dd == d)
            if pts:
                ax1.plot(*zip(*pts), marker=markers[i % len(markers)], color=color,
                         ls="-" if d == widths[-1] else "--", label=f"{LABELS.get(arch, arch)}, d={d}")
            c = cells.get((arch, d, hardest))
            run = runs.get((arch, d, hardest, c["best_lr"])) if c else None
            if run and d == widths[-1] and run.get("train_loss_curve"):
                steps, losses = zip(*run["train_loss_curve"])
                ax3.plot([s * run["batch_size"] for s in steps], losses, color=color, lw=1.3,
                         label=f"{LABELS.get(arch, arch)} (lr {c['best_lr']:g})")
            if c:
                ax2.scatter(c["params"]["state_bytes_per_layer"], c["accuracy"], color=color,
                            marker=markers[i % len(markers)], s=30 + 25 * j,
                            label=f"{LABELS.get(arch, arch)}, d={d}")
    ax1.set_xlabel("key-value pairs")
    ax1.set_ylabel("recall accuracy (best lr)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=6.5)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("state bytes per layer (fp32; attention: KV cache at the sequence length)")
    ax2.set_ylabel(f"recall accuracy, {hardest} pairs")
    ax2.set_ylim(-0.02, 1.02)
    ax2.grid(alpha=0.3)
    ax3.axhline(math.log(hardest), color="gray", ls="--", lw=1, label=f"ln {hardest} (copy-any-value plateau)")
    ax3.set_xlabel("training examples")
    ax3.set_ylabel(f"query loss (nats), d={widths[-1]}, {hardest} pairs")
    ax3.grid(alpha=0.3)
    ax3.legend(fontsize=6.5)
    fig.suptitle("MQAR: recall accuracy")
    fig.tight_layout()
    _save(fig, path, plt)
    return None
