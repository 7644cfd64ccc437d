"""Run logs: JSONL (every record, including per-expert router load), CSV (the scalar columns),
and TensorBoard when it is installed (the ``[logging]`` extra; when it is wanted but missing,
one line on stderr says so). Only rank 0 writes.

Each write opens, appends and closes its file, so the log files always live in the current
checkpoint directory, even after a save has atomically replaced that directory.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

# pyproject.toml's [logging] extra asks for the same (tests/train/test_metrics.py checks it).
TENSORBOARD_REQUIREMENT = "tensorboard>=2.16.2"

CSV_COLUMNS = ("step", "split", "loss", "ce", "aux", "lr", "grad_norm", "tokens", "tokens_per_s",
               "elapsed_s", "perplexity", "bits_per_byte")


class MetricsLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.dir = Path(out_dir)
        self.enabled = enabled
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self._tb = None
        self._tb_wanted = tensorboard
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:  # fresh run: start new logs
            for f in (self.jsonl, self.csv):
                f.unlink(missing_ok=True)
        else:  # drop records written after the checkpoint we resume from
            self._truncate_after(resume_step)
        if not self.csv.exists():
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(CSV_COLUMNS)
        self.open_tensorboard()

    def _truncate_after(self, step: int) -> None:
        if self.jsonl.exists():
            keep = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            self.jsonl.write_text("".join(line + "\n" for line in keep))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                header, body = rows[0], rows[1:]
                body = [r for r in body if r and int(r[0]) <= step]
                with open(self.csv, "w", newline="") as f:
                    csv.writer(f).writerows([header] + body)

    def open_tensorboard(self) -> None:
        if not (self.enabled and self._tb_wanted) or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as err:  # ImportError when tensorboard is not installed
            self._tb_wanted = False  # said once per run: a later save does not repeat it
            reason = "the tensorboard package is not installed" if isinstance(err, ImportError) else err
            print(f"TensorBoard logging is off: {reason} (install it with: pip install '{TENSORBOARD_REQUIREMENT}', "
                  "the [logging] extra; --no-tensorboard turns this message off)", file=sys.stderr)
            return
        self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"))

    def close_tensorboard(self) -> None:
        """Before a checkpoint save replaces the directory; reopened afterwards."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(record.get(c)) for c in CSV_COLUMNS])
        if self._tb is not None:
            step = record["step"]
            split = record.get("split", "train")
            for key, value in record.items():
                if key in ("step", "split"):
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{split}/{key}", value, step)
                elif isinstance(value, dict):  # router load fractions
                    for router, loads in value.items():
                        if isinstance(loads, list):
                            for e, x in enumerate(loads):
                                self._tb.add_scalar(f"router/{router}/expert{e}", x, step)
            self._tb.flush()

    def close(self) -> None:
        self.close_tensorboard()


def add_micro_batch(sums: torch.Tensor, load: dict[str, torch.Tensor], loss: torch.Tensor, ce: torch.Tensor,
                    aux: torch.Tensor | None, router_load: dict[str, torch.Tensor]) -> torch.Tensor:
    """A training step's totals over its micro-batches, on the device (no host sync): returns
    ``sums`` (3,) fp32 plus [loss, cross-entropy, aux loss (0 if None)]; adds each router's
    (E,) token counts into ``load`` in place."""
    aux = aux.detach().float() if aux is not None else sums.new_zeros(())
    for name, counts in router_load.items():
        counts = counts.detach().float()
        load[name] = load[name] + counts if name in load else counts
    return sums + torch.stack([loss.detach().float(), ce.detach().float(), aux])


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
