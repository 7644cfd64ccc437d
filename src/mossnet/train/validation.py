"""Validation during and after training: loss, perplexity and bits per byte of each source's
validation split (``mossnet.eval.perplexity``, the numbers ``mossnet eval --perplexity``
reports), and the token-bigram baseline the final numbers are compared with."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from . import distributed
from .training_data import TrainingData, ValSet

SEGMENTS = 8  # periodic validation: evenly spaced segments of the split


class Validator:
    """Rank 0 evaluates (every rank under FSDP, whose forward is collective); ``log(record)`` and
    ``say(text)`` report on rank 0."""

    def __init__(self, data: TrainingData, seq_len: int, batch_size: int, info: distributed.DistInfo,
                 device: torch.device, autocast, log: Callable[[dict], None], say: Callable[[str], None]):
        self.data, self.seq_len, self.batch_size = data, seq_len, batch_size
        self.info, self.device, self.autocast, self.log, self.say = info, device, autocast, log, say

    def validate(self, model, raw_model, step: int, elapsed: float, max_tokens: int | None = None,
                 progress: bool = False) -> dict[str, Any] | None:
        """Evaluate every validation set (``max_tokens`` of each, or all of it); returns the first
        set's result. Records carry ``source`` in a mixture."""
        first = None
        for val in self.data.val_sets:
            source = val.source if len(self.data.sources) > 1 else None
            result = self._one(model, raw_model, val, max_tokens, progress)
            if self.info.is_main:
                self._report(result, step, elapsed, source)
            first = first or result
        return first

    def bigram(self) -> dict[str, float] | None:
        """A token-bigram model fitted on the first source's train split, scored on its validation set."""
        val = self.data.primary_val
        if val is None:
            return None
        from mossnet.data import bigram_cross_entropy, fit_bigram

        table = fit_bigram(self.data.train_tokens, self.data.vocab_size)
        loss = float(bigram_cross_entropy(table, val.tokens))
        bpb = loss / math.log(2) * (len(val.tokens) - 1) / val.bytes if val.bytes else float("nan")
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": bpb}

    def _one(self, model, raw_model, val: ValSet, max_tokens: int | None, progress: bool) -> dict[str, Any] | None:
        from mossnet.eval.perplexity import evaluate_perplexity

        result = None
        if self.info.is_main or self.info.fsdp:
            model.eval()
            with torch.no_grad(), self.autocast():
                result = self._evaluate(evaluate_perplexity, raw_model, val, max_tokens, progress)
            model.train()
        self.info.barrier()
        return result

    def _report(self, result: dict[str, Any], step: int, elapsed: float, source: str | None) -> None:
        record = {"step": step, "split": "val", "loss": result["loss"], "perplexity": result["perplexity"],
                  "bits_per_byte": result["bits_per_byte"], "tokens": result["tokens"], "elapsed_s": elapsed}
        if source:
            record["source"] = source
        self.log(record)
        self.say(f"step {step}: val loss {result['loss']:.4f}, ppl {result['perplexity']:.2f}, "
                 f"{result['bits_per_byte']:.4f} bits/byte ({result['tokens']:,} tokens)"
                 + (f" [{source}]" if source else ""))

    def _evaluate(self, evaluate_perplexity, raw_model, val: ValSet, max_tokens: int | None,
                  progress: bool) -> dict[str, Any]:
        """The whole split, or ``max_tokens`` of it taken as ``SEGMENTS`` evenly spaced segments (the
        start of a split alone can be unrepresentative: a corpus split by whole documents begins
        with one document)."""
        tokens, n_bytes = val.tokens, val.bytes
        kwargs = dict(seq_len=self.seq_len, stride=self.seq_len, batch_size=self.batch_size, device=self.device,
                      progress=progress and self.info.is_main)
        n = len(tokens)
        if not max_tokens or max_tokens >= n:
            return evaluate_perplexity(raw_model, tokens, n_bytes, **kwargs)
        segments = max(1, min(SEGMENTS, max_tokens // (self.seq_len + 1)))
        length = max_tokens // segments
        starts = np.linspace(0, n - length, segments).astype(np.int64)
        nats = scored = 0.0
        for start in starts:
            r = evaluate_perplexity(raw_model, tokens[start:start + length], max(1, round(n_bytes * length / n)),
                                    **kwargs)
            nats += r["loss"] * r["tokens"]
            scored += r["tokens"]
        loss = nats / scored
        est_bytes = n_bytes * segments * length / n
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nats / math.log(2) / est_bytes,
                "tokens": int(scored)}
