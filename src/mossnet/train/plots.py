"""The loss-curve PNG: training loss (cross-entropy), validation loss, and the bigram baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path, bigram_loss: float | None = None,
                    title: str = "") -> str | None:
    """Write the PNG and return None, or return a note saying why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss curve (pip install 'mossnet[plot]')"
    train = [(r["step"], r.get("ce", r.get("loss"))) for r in records
             if r.get("split") == "train" and isinstance(r.get("ce", r.get("loss")), (int, float))]
    val = [(r["step"], r["loss"]) for r in records
           if r.get("split") == "val" and isinstance(r.get("loss"), (int, float))]
    if not train and not val:
        return "no metrics recorded: no loss curve"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train (cross-entropy)", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5, ms=4)
    if bigram_loss is not None:
        ax.axhline(bigram_loss, color="gray", ls="--", lw=1, label=f"bigram baseline ({bigram_loss:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_ylim(*loss_axis_range([v for _, v in train + val], bigram_loss))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return None


def loss_axis_range(losses: list[float], bigram_loss: float | None = None) -> tuple[float, float]:
    """The y range of the plot: from the lowest loss to a little above the loss after warm-up
    (the 90th percentile), so the first steps' ln(vocab) ~ 8 nats do not squash the useful range.

    >>> loss_axis_range([8.3, 6.0, 5.0, 4.5, 4.2, 4.1, 4.0, 3.9, 3.9, 3.8, 3.8])
    (3.69, 6.11)
    """
    import numpy as np

    values = np.asarray([v for v in losses if np.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return (0.0, 1.0)
    low = float(values.min())
    high = float(np.percentile(values, 90))
    if bigram_loss is not None and np.isfinite(bigram_loss):
        low, high = min(low, bigram_loss), max(high, bigram_loss)
    pad = 0.05 * max(high - low, 1e-3)
    return (round(low - pad, 2), round(high + pad, 2))
