"""What a trained language model does with its context: the decomposition study's metrics.

Measured on validation windows after training (:func:`run_probes`):

* **recall tokens** (Zoology's split of real text, Arora et al. 2023): a target token t is an
  associative-recall token when its bigram (x[t-1], x[t]) already occurred earlier in the same
  window; ``loss_recall`` is the mean cross-entropy on those targets, ``loss_other`` on the rest;
* **repeated passage**: a window holds a validation passage of ``seq_len // 2`` tokens twice;
  ``loss_second_copy`` is the loss on the second copy (its first token excepted: nothing
  announces the repeat), ``loss_first_copy`` on the same offsets of the first copy;
* **routers** (MoSSE routers only; none with one expert): the load entropy over the probe
  tokens, divided by ln E (1 = balanced), and how often adjacent tokens of a window go to the
  same expert: ``top1_same`` (same best expert) and ``topk_overlap`` (shared experts / k).

Each fast function has a loop reference beside it; ``tests/studies/test_lm_probes.py`` compares
them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def repeated_bigram_mask(x: torch.Tensor) -> torch.Tensor:
    """(batch, T) int -> (batch, T) bool: position t >= 1 whose bigram (x[t-1], x[t]) occurs at
    some earlier position s < t of the same row (position 0 is never a recall token).

    A stable sort of the bigram codes keeps equal codes in position order, so each one but the
    first of a run of equal codes is a repeat."""
    B, T = x.shape
    out = torch.zeros(B, T, dtype=torch.bool, device=x.device)
    if T < 2:
        return out
    vocab = int(x.max()) + 1
    codes = x[:, :-1].long() * vocab + x[:, 1:].long()  # (B, T-1): bigram ending at t = 1..T-1
    sorted_codes, order = torch.sort(codes, dim=1, stable=True)
    repeat_sorted = torch.zeros_like(sorted_codes, dtype=torch.bool)
    repeat_sorted[:, 1:] = sorted_codes[:, 1:] == sorted_codes[:, :-1]
    repeat = torch.zeros_like(repeat_sorted).scatter(1, order, repeat_sorted)
    out[:, 1:] = repeat
    return out


def repeated_bigram_mask_reference(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape, dtype=torch.bool)
    for b, row in enumerate(x.tolist()):
        seen = set()
        for t in range(1, len(row)):
            bigram = (row[t - 1], row[t])
            out[b, t] = bigram in seen
            seen.add(bigram)
    return out


def router_adjacency(logits: torch.Tensor, batch: int, T: int, k: int) -> tuple[float, float, int]:
    """Router logits (batch * T, E) in row order -> (adjacent pairs with the same best expert,
    summed shared experts / k over adjacent pairs, adjacent pairs)."""
    E = logits.shape[-1]
    order = torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices.view(batch, T, E)
    top1 = order[..., 0]
    same = int((top1[:, 1:] == top1[:, :-1]).sum())
    chosen = torch.zeros(batch, T, E, dtype=torch.bool, device=logits.device).scatter(2, order[..., :k], True)
    shared = (chosen[:, 1:] & chosen[:, :-1]).sum(-1).float() / k
    return same, float(shared.sum()), batch * (T - 1)


def router_adjacency_reference(logits: torch.Tensor, batch: int, T: int, k: int) -> tuple[float, float, int]:
    rows = logits.view(batch, T, -1).tolist()
    same = shared = 0.0
    for row in rows:
        picks = [sorted(range(len(p)), key=lambda e: (-p[e], e))[:k] for p in row]
        for a, b in zip(picks, picks[1:]):
            same += a[0] == b[0]
            shared += len(set(a) & set(b)) / k
    return same, shared, batch * (T - 1)


def load_entropy(load: torch.Tensor) -> float:
    """Entropy of the load fractions (E,) divided by ln E: 1 = balanced, 0 = one expert."""
    p = load.double() / load.double().sum().clamp(min=1)
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / math.log(len(load))) if len(load) > 1 else 1.0


def _token_losses(model, x: torch.Tensor, autocast, routers: bool):
    """(per-target losses (batch, T-1), the output's router logits and loads or None)."""
    with torch.no_grad(), autocast():
        extra = {"output_router_stats": True} if routers else {}
        out = model(input_ids=x, use_cache=False, **extra)
    logits = out.logits.float()
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    return losses.view(x.shape[0], -1), (out.router_logits, out.router_load) if routers else None


class _RouterTally:
    """Loads and adjacency counts summed over the probe batches, per MoSSE router."""

    def __init__(self, k: int):
        self.k, self.load, self.counts = k, {}, {}

    def add(self, logits: dict, loads: dict, batch: int, T: int) -> None:
        for name, lg in logits.items():
            if not name.endswith(".mixer"):
                continue
            self.load[name] = self.load.get(name, 0) + loads[name].detach().double().cpu()
            same, shared, pairs = router_adjacency(lg, batch, T, self.k)
            old = self.counts.get(name, (0, 0.0, 0))
            self.counts[name] = (old[0] + same, old[1] + shared, old[2] + pairs)

    def summary(self) -> dict[str, Any] | None:
        if not self.load:
            return None
        per_layer = [{"router": name, "load_entropy": load_entropy(self.load[name]),
                      "top1_same": self.counts[name][0] / max(self.counts[name][2], 1),
                      "topk_overlap": self.counts[name][1] / max(self.counts[name][2], 1)} for name in self.load]
        mean = {key: sum(r[key] for r in per_layer) / len(per_layer) for key in ("load_entropy", "top1_same",
                                                                                 "topk_overlap")}
        return {**mean, "per_layer": per_layer}


def run_probes(model, tokens, seq_len: int, probe_tokens: int, device, autocast, batch: int = 4) -> dict[str, Any]:
    """The metrics of the module docstring on the first ``probe_tokens`` validation tokens
    (windows of ``seq_len``; as many repeated-passage windows). ``model``: a MossNet (router
    metrics) or any causal LM taking ``input_ids``."""
    n = max(1, min(probe_tokens, len(tokens)) // seq_len)
    windows = torch.from_numpy(np.asarray(tokens[:n * seq_len], dtype=np.int64).reshape(n, seq_len))
    routers = getattr(getattr(model, "config", None), "model_type", None) == "mossnet"
    tally = _RouterTally(getattr(model.config, "ssm_top_k", 1) if routers else 1)
    sums = {"recall": 0.0, "other": 0.0, "n_recall": 0, "n_other": 0}
    model.eval()
    for i in range(0, n, batch):
        x = windows[i:i + batch].to(device)
        losses, stats = _token_losses(model, x, autocast, routers)
        recall = repeated_bigram_mask(x)[:, 1:]
        sums["recall"] += float(losses[recall].sum())
        sums["other"] += float(losses[~recall].sum())
        sums["n_recall"] += int(recall.sum())
        sums["n_other"] += int((~recall).sum())
        if stats is not None and stats[0]:
            tally.add(stats[0], stats[1], x.shape[0], x.shape[1])
    copy = _copy_losses(model, tokens, seq_len, n, device, autocast, batch)
    return {
        "windows": n, "seq_len": seq_len,
        "loss_recall": sums["recall"] / max(sums["n_recall"], 1) if sums["n_recall"] else None,
        "loss_other": sums["other"] / max(sums["n_other"], 1),
        "recall_fraction": sums["n_recall"] / max(sums["n_recall"] + sums["n_other"], 1),
        **copy,
        "routers": tally.summary(),
    }


def _copy_losses(model, tokens, seq_len: int, n: int, device, autocast, batch: int) -> dict[str, float]:
    """The repeated-passage losses (:func:`mossnet.eval.probes.repeated_passage_loss`) of ``n``
    passages of ``seq_len // 2`` validation tokens, taken in order."""
    from mossnet.eval.probes import repeated_passage_loss

    half = seq_len // 2
    n = min(n, len(tokens) // max(half, 1))
    if n < 1:
        return {"loss_first_copy": 0.0, "loss_second_copy": 0.0}
    result = repeated_passage_loss(model, tokens, passage_len=half, batch_size=batch,
                                   starts=[i * half for i in range(n)], autocast=autocast)
    return {"loss_first_copy": result["first_copy_loss"], "loss_second_copy": result["second_copy_loss"]}
