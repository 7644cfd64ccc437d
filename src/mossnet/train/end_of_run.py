"""What a run prints and writes after its final checkpoint: the results table next to the bigram
baseline, the loss curve, and a short sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def results_table(final: dict[str, Any], arch: str) -> str:
    """The model's validation numbers next to the bigram baseline's, and which is better."""
    lines = [f"{'':26s}{'loss':>8s}{'ppl':>10s}{'bits/byte':>11s}"]
    names = {"model": f"{arch} (validation)", "bigram": "bigram baseline"}
    for key in ("model", "bigram"):
        if key in final:
            r = final[key]
            lines.append(f"{names[key]:26s}{r['loss']:8.4f}{r['perplexity']:10.2f}{r['bits_per_byte']:11.4f}")
    if "model" in final and "bigram" in final:
        better = final["model"]["loss"] < final["bigram"]["loss"]
        lines.append("the model beats the bigram baseline" if better else
                     "warning: the model does not beat the bigram baseline yet (train longer?)")
    return "\n".join(lines)


def plot(logs: Path, bigram: dict[str, float] | None, title: str) -> str:
    """``logs/loss_curve.png`` from ``logs/metrics.jsonl``; returns the line to print."""
    from .metrics import read_jsonl
    from .plots import plot_loss_curve

    note = plot_loss_curve(read_jsonl(logs / "metrics.jsonl"), logs / "loss_curve.png",
                           bigram_loss=bigram["loss"] if bigram else None, title=title)
    return note or f"loss curve: {logs / 'loss_curve.png'}"


def sample(model, tokenizer, prompt: str, fallback_ids: np.ndarray, *, tokens: int, seed: int, eos_id,
           device: torch.device, autocast) -> str:
    """``tokens`` sampled tokens after ``prompt`` (or after the first ids of a split)."""
    if prompt:
        prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
    else:
        prompt_ids = torch.as_tensor(np.asarray(fallback_ids[:12], dtype=np.int64))[None]
    torch.manual_seed(seed)
    model.eval()
    with torch.no_grad(), autocast():
        out = model.generate(prompt_ids.to(device), max_new_tokens=tokens, do_sample=True, temperature=0.8,
                             top_p=0.95, pad_token_id=eos_id, eos_token_id=eos_id)
    return tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
