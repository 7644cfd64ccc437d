"""The reports planned for three seeds: paired per-seed differences with the decision rule, the
decomposition study's tables, the MQAR gate's ladder and the MQAR ranking's table and plot.

Spread is ``mean ± sd`` (sample standard deviation over seeds). Decision rule, stated before the
runs: a gap counts only if its mean exceeds twice the sd of the per-seed paired differences.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .report import _bytes, _millions, _pyplot, _save, group_lm


# ------------------------------------------------------------------------- paired differences
def _sd(values: list[float]) -> float:
    """Sample standard deviation (n - 1); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _metric(run: dict[str, Any], key: str) -> float | None:
    """A number of a run: a top-level key, or ``probe_metrics.<key>`` / ``probe_metrics.routers.<key>``."""
    if run.get("diverged"):
        return None
    if key in run:
        return run[key]
    probes = run.get("probe_metrics") or {}
    if key in probes:
        return probes[key]
    return (probes.get("routers") or {}).get(key)


def paired_differences(results: list[dict[str, Any]], reference: str, key: str = "val_loss"):
    """variant -> (per-seed differences variant - reference, mean, sd) over the seeds both ran
    (each seed shares its data order, so the difference cancels most of the seed's luck)."""
    by = {(r["variant"], r["seed"]): _metric(r, key) for r in results}
    ref = {seed: v for (variant, seed), v in by.items() if variant == reference and v is not None}
    out = OrderedDict()
    for variant in group_lm(results):
        if variant == reference:
            continue
        diffs = [by[(variant, s)] - ref[s] for s in sorted(ref) if by.get((variant, s)) is not None]
        if diffs:
            out[variant] = (diffs, sum(diffs) / len(diffs), _sd(diffs))
    return out


def counts(mean: float, sd: float, n: int) -> bool:
    """The decision rule: a gap counts only if |mean| exceeds twice the sd of the paired differences."""
    return n >= 2 and abs(mean) > 2 * sd


def _contrast_rows(results, contrasts, keys) -> list[str]:
    """Table rows for ``contrasts`` = [(variant, against), ...]: per metric, the per-seed
    differences variant - against over the seeds both ran, their mean ± sd and the verdict."""
    labels = {v: runs[0]["label"] for v, runs in group_lm(results).items()}
    rows = []
    for key, name in keys:
        for variant, against in contrasts:
            if variant not in labels or against not in labels:
                continue
            found = paired_differences([r for r in results if r["variant"] in (variant, against)], against, key)
            if variant not in found or len(found[variant][0]) < 2:
                continue
            diffs, mean, sd = found[variant]
            verdict = "**counts**" if counts(mean, sd, len(diffs)) else "within spread"
            rows.append(f"| {labels[variant]} | {labels[against]} | {name} | {' / '.join(f'{d:+.3f}' for d in diffs)} "
                        f"| {mean:+.3f} ± {sd:.3f} | {verdict} |")
    return rows


_CONTRAST_HEAD = ["| model | minus | metric | per seed | mean ± sd | gap |", "|---|---|---|---|---:|---|"]
_RULE = "same seed = same data order; mean ± sd over seeds; a gap counts only if |mean| > 2 sd"


def paired_table(results: list[dict[str, Any]], reference: str, keys=(("val_loss", "val loss"),)) -> str:
    """Per variant and metric: the per-seed differences to ``reference``, their mean ± sd, and
    whether the gap counts (|mean| > 2 sd, at least two seeds). Empty without two paired seeds."""
    labels = {v: runs[0]["label"] for v, runs in group_lm(results).items()}
    if reference not in labels:
        return ""
    rows = _contrast_rows(results, [(v, reference) for v in labels if v != reference], keys)
    if not rows:
        return ""
    return "\n".join([f"Paired differences to {labels[reference]} ({_RULE}):", ""] + _CONTRAST_HEAD + rows)


def contrast_table(results: list[dict[str, Any]], contrasts, keys, title: str) -> str:
    """The paired differences of chosen pairs ``contrasts`` = [(variant, against), ...] (what a
    study's plan says each variant isolates); empty without two paired seeds for any pair."""
    rows = _contrast_rows(results, contrasts, keys)
    if not rows:
        return ""
    return "\n".join([f"{title} ({_RULE}):", ""] + _CONTRAST_HEAD + rows)


# ------------------------------------------------------------------------------ decomposition
DECOMPOSITION_METRICS = (("val_loss", "val loss"), ("loss_recall", "recall-token loss"),
                         ("loss_other", "other-token loss"), ("loss_second_copy", "2nd-copy loss"),
                         ("load_entropy", "router load entropy"), ("top1_same", "adjacent same expert"))


def decomposition_table(results: list[dict[str, Any]]) -> str:
    """One row per variant: learning rate (and the swept variant it comes from), seeds, each
    metric's mean ± sd over seeds."""
    from .decomposition import LR_FROM

    head = "| variant | lr | seeds | " + " | ".join(name for _, name in DECOMPOSITION_METRICS) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(DECOMPOSITION_METRICS)]
    for _, runs in sorted(group_lm(results).items()):
        cells = []
        for key, _ in DECOMPOSITION_METRICS:
            vals = [v for v in (_metric(r, key) for r in runs) if v is not None]
            cells.append(f"{sum(vals) / len(vals):.3f} ± {_sd(vals):.3f}" if vals else "")
        lr = ", ".join(f"{x:g}" for x in sorted({r["lr"] for r in runs}))
        source = LR_FROM.get(runs[0]["variant"], runs[0]["variant"])
        lr += f" (from {source})" if source != runs[0]["variant"] else ""
        lines.append(f"| {runs[0]['label']} | {lr} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decomposition_main_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs at each variant's inherited rate (the best of its swept variant): the ones the
    tables, the paired differences and the plot read; the sweep's other rates are left out."""
    from .decomposition import LR_FROM, best_rates

    rates = best_rates(results)
    return [r for r in results if LR_FROM[r["variant"]] in rates and r["lr"] == rates[LR_FROM[r["variant"]]]]


def decomposition_report(results: list[dict[str, Any]]) -> str:
    """The main table (each variant at its inherited rate), the sweep, the paired differences of
    the pairs the plan contrasts, and those to A."""
    from .decomposition import CONTRASTS, SWEPT

    main = decomposition_main_runs(results)
    sweep = [r for r in results if r["seed"] == 0 and r["variant"] in SWEPT]
    parts = [decomposition_table(main) if main else "no variant has finished at its best rate yet"]
    if len({r["lr"] for r in sweep}) > 1:
        parts.append("Learning-rate sweep, seed 0 (final validation loss):\n\n" + _sweep_grid(sweep))
    contrasts = contrast_table(main, CONTRASTS, DECOMPOSITION_METRICS[:4],
                               "What each variant isolates: paired differences of the planned pairs")
    paired = paired_table(main, "A", DECOMPOSITION_METRICS[:4])
    return "\n\n".join(parts + [t for t in (contrasts, paired) if t])


def _sweep_grid(results: list[dict[str, Any]]) -> str:
    lrs = sorted({r["lr"] for r in results})
    lines = ["| variant | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
    for _, runs in sorted(group_lm(results).items()):
        at = {r["lr"]: ("diverged" if r.get("diverged") else f"{r['val_loss']:.3f}") for r in runs}
        lines.append(f"| {runs[0]['label']} | " + " | ".join(at.get(lr, "") for lr in lrs) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- MQAR gate, rank
def gate_table(verdict: dict[str, Any]) -> str:
    """The gate's ladder: each rung's change, its gate-slice accuracy per rate, pass or fail."""
    from .mqar_calibration import GATE_ACCURACY, GATE_SLICE

    lrs = sorted({lr for row in verdict["rungs"] for lr in row["by_lr"]})
    lines = [f"MQAR gate: accuracy on the {GATE_SLICE} slice (mean over seeds); a rung passes at >= {GATE_ACCURACY}.",
             "", "| rung | change from the rung above | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | passes |",
             "|---|---|" + "---:|" * len(lrs) + "---|"]
    for row in verdict["rungs"]:
        accs = " | ".join(f"{row['by_lr'][lr]:.3f}" if lr in row["by_lr"] else "" for lr in lrs)
        lines.append(f"| {row['rung']} | {row['change']} | {accs} | {'yes' if row['passes'] else 'no'} |")
    if not verdict["zoology_passes"]:
        lines += ["", "Zoology's attention does not pass: the MQAR ranking must not be run on this setup."]
    elif verdict["blocked_by"]:
        lines += ["", f"Blocking factor: the rung `{verdict['blocked_by']}` is the first that fails."]
    else:
        lines += ["", "Every rung passes."]
    return "\n".join(lines)


def rank_runs_at_best_rate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ranking's runs at their cell's best seed-0 rate (the rate its other seeds ran at)."""
    from .mqar_calibration import rank_best_rates

    rates = rank_best_rates(results)
    return [r for r in results if rates.get((r["variant"], r["model"]["ssm_state_dim"])) == r["lr"]]


def rank_cells(results: list[dict[str, Any]]) -> "OrderedDict[tuple, dict[str, Any]]":
    """(model, state bytes per layer) -> {label, lr, seeds, per slice [accuracies over seeds]} at the
    cell's best seed-0 rate (the rate its other seeds ran at)."""
    cells: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
    for r in rank_runs_at_best_rate(results):
        key = (r["variant"], r["params"]["state_bytes_per_layer"])
        cell = cells.setdefault(key, {"label": r["label"], "lr": r["lr"], "seeds": [], "slices": OrderedDict(),
                                      "active": r["params"]["active"]})
        cell["seeds"].append(r["seed"])
        for name, s in r["slices"].items():
            cell["slices"].setdefault(name, []).append(s["accuracy"])
    return cells


def _slice_names(cells) -> list[str]:
    from .mqar_data import slice_key

    return sorted({n for c in cells.values() for n in c["slices"]}, key=slice_key)


def _mean_sd(values: list[float]) -> str:
    """"mean ± sd", or the value alone for one seed: one seed has no spread, and "± 0.000" would
    read as a measured one."""
    mean = sum(values) / len(values)
    return f"{mean:.3f} ± {_sd(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def rank_table(results: list[dict[str, Any]]) -> str:
    """One row per (model, state size): accuracy per slice, mean ± sd over seeds at the cell's rate
    (the value alone where one seed has run)."""
    cells = rank_cells(results)
    names = _slice_names(cells)
    lines = ["| model | state / layer | active params | lr | seeds | " + " | ".join(names) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(names)]
    for (_, state), c in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        accs = " | ".join(_mean_sd(a) if (a := c["slices"].get(n)) else "" for n in names)
        lines.append(f"| {c['label']} | {_bytes(state)} | {_millions(c['active'])} | {c['lr']:g} | "
                     f"{len(c['seeds'])} | {accs} |")
    return "\n".join(lines)


def rank_report(results: list[dict[str, Any]]) -> str:
    """The ranking's table, then per matched state size the paired per-seed differences of every
    pair of models on overall accuracy and on the hardest (last) slice."""
    from .mqar_calibration import RANK_ARCHS

    parts = [rank_table(results)]
    kept = rank_runs_at_best_rate(results)
    names = _slice_names(rank_cells(results))
    if not kept or not names:
        return parts[0]
    hardest = names[-1]
    # The study solves every model's N to the same cache size, so the i-th smallest state of each
    # model is matched with the i-th of every other (6.2 and 6.3 KiB are one size).
    sizes: dict[str, list[int]] = {}
    for r in kept:
        sizes.setdefault(r["variant"], []).append(r["params"]["state_bytes_per_layer"])
    order = {v: sorted(set(s)) for v, s in sizes.items()}
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in kept:
        state = r["params"]["state_bytes_per_layer"]
        groups.setdefault(order[r["variant"]].index(state), []).append(
            {"variant": r["variant"], "seed": r["seed"], "label": r["label"], "diverged": r.get("diverged"),
             "accuracy": r["accuracy"], "hardest": r["slices"].get(hardest, {}).get("accuracy"), "bytes": state})
    models = [m for m in RANK_ARCHS if m in order] + [m for m in order if m not in RANK_ARCHS]
    contrasts = [(a, b) for i, b in enumerate(models) for a in models[i + 1:]]
    routers = rank_router_table(kept)
    if routers:
        parts.append(routers)
    for _, runs in sorted(groups.items()):
        span = sorted({r["bytes"] for r in runs})
        title = (f"Paired differences at {' / '.join(dict.fromkeys(_bytes(b) for b in span))} of state per layer, "
                 f"overall accuracy and the {hardest} slice")
        table = contrast_table(runs, contrasts, (("accuracy", "overall"), ("hardest", hardest)), title)
        if table:
            parts.append(table)
    return "\n\n".join(parts)


def rank_router_table(runs: list[dict[str, Any]]) -> str:
    """Per routing model and state size, its MoSSE routers along training (``router_curve``):
    load entropy / ln E at the end and its lowest point, adjacent tokens sharing their best
    expert at the end, mean ± sd over seeds. Empty when no run recorded a router curve."""
    cells: OrderedDict[tuple, list[list[list[float]]]] = OrderedDict()
    labels = {}
    for r in sorted(runs, key=lambda r: (r["params"]["state_bytes_per_layer"], r["variant"])):
        if r.get("router_curve"):
            key = (r["variant"], r["params"]["state_bytes_per_layer"])
            cells.setdefault(key, []).append(r["router_curve"])
            labels[key] = r["label"]
    if not cells:
        return ""
    from .mqar import ROUTER_EXAMPLES

    lines = [f"Routers along training (MoSSE routers of the models that route; {ROUTER_EXAMPLES} held-out examples "
             "of the hardest slice at each curve point; mean ± sd over seeds):", "",
             "| model | state / layer | seeds | load entropy, end | load entropy, lowest | adjacent same expert, end |",
             "|---|---:|---:|---:|---:|---:|"]
    for (variant, state), curves in cells.items():
        end = [c[-1][1] for c in curves]
        low = [min(p[1] for p in c) for c in curves]
        same = [c[-1][2] for c in curves]
        lines.append(f"| {labels[(variant, state)]} | {_bytes(state)} | {len(curves)} | {_mean_sd(end)} | "
                     f"{_mean_sd(low)} | {_mean_sd(same)} |")
    return "\n".join(lines)


def plot_rank(results: list[dict[str, Any]], path: str | Path) -> str | None:
    """One panel per slice: accuracy against state bytes per layer, one line per model, mean ± sd
    over seeds (error bars), never the best seed."""
    plt = _pyplot()
    if plt is None:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    cells = rank_cells(results)
    names = _slice_names(cells)
    if not names:
        return "no MQAR ranking results"
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.6), dpi=120, squeeze=False)
    for ax, name in zip(axes[0], names):
        for model in OrderedDict.fromkeys(k[0] for k in cells):
            pts = sorted((state, c) for (m, state), c in cells.items() if m == model and name in c["slices"])
            if not pts:
                continue
            xs = [s for s, _ in pts]
            means = [sum(c["slices"][name]) / len(c["slices"][name]) for _, c in pts]
            sds = [_sd(c["slices"][name]) for _, c in pts]
            ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=pts[0][1]["label"])
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"slice {name} (length x pairs)", fontsize=9)
        ax.set_xlabel("state bytes per layer (fp32)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (mean ± sd over seeds)")
    axes[0][0].legend(fontsize=6.5)
    fig.tight_layout()
    _save(fig, path, plt)
    return None
