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
