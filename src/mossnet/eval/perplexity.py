"""Perplexity and bits-per-byte of a causal LM on a token stream, with a sliding window.

Works with any Hugging Face causal LM (MossNet, Llama, ...): it needs only
``model(input_ids=...).logits`` of shape (batch, time, vocab). The trainer and the comparison
study call :func:`evaluate_perplexity` on a prepared corpus's held-out split; ``mossnet eval
--perplexity`` does the same from the command line.

Definitions (natural logarithms throughout):

- the stream ``tokens[0 .. n-1]`` is covered by windows of ``seq_len`` predictions starting every
  ``stride`` tokens (``mossnet.data.sequential_windows``); each of tokens ``1 .. n-1`` is scored
  exactly once, by the first window that reaches it, so with ``stride < seq_len`` every token after
  the first window is predicted from at least ``seq_len - stride`` tokens of context;
- ``loss`` = total negative log-likelihood (nats) / number of scored tokens;
- ``perplexity`` = exp(loss);
- ``bits_per_byte`` = total nats / (ln 2 * UTF-8 bytes of the text), which, unlike perplexity,
  compares models with different tokenizers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mossnet.data.batches import IGNORE_INDEX, sequential_windows


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood in nats -> bits per UTF-8 byte of the scored text."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return total_nats / (math.log(2) * n_bytes)


def _summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of -log p(label) over labels != -100, in float64.

    logits: (batch, time, vocab), any float dtype; labels: (batch, time) int64.
    One row at a time, so the float32 copy of the logits stays (time, vocab) in size.
    """
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for row in range(logits.shape[0]):
        nll = F.cross_entropy(logits[row].float(), labels[row], ignore_index=IGNORE_INDEX, reduction="sum")
        total += nll.double()
    return total


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    tokens: np.ndarray,
    n_bytes: int,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity and bits-per-byte of ``model`` on ``tokens``.

    Args:
        model: a causal LM; put in eval mode for the call and restored afterwards.
        tokens: 1-D integer array (shape (n,)), e.g. ``mossnet.data.open_split(data_dir, "val")``.
        n_bytes: UTF-8 bytes of the text ``tokens`` encodes (the manifest's ``bytes`` for the split).
        seq_len: predictions per window (the model sees ``seq_len`` input tokens).
        stride: tokens between window starts; ``None`` means ``seq_len`` (windows just touch).
        batch_size: windows per forward pass.
        device: where to run; default: the model's device.
        max_tokens: score only the first ``max_tokens`` tokens (a quick estimate during training).
            Bytes are then taken in proportion to the tokens kept, and ``bytes_estimated`` is True.
        progress: show a tqdm bar (counts scored tokens).

    Returns:
        ``{"loss", "perplexity", "bits_per_byte", "tokens", "bytes", "bytes_estimated",
        "seq_len", "stride"}`` with ``tokens`` the number of scored tokens (n - 1).
    """
    stride = seq_len if stride is None else stride
    bytes_estimated = False
    if max_tokens is not None and max_tokens < len(tokens):
        n_bytes = max(1, round(n_bytes * max_tokens / len(tokens)))
        tokens, bytes_estimated = tokens[:max_tokens], True
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {len(tokens)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device

    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    try:
        with tqdm(total=len(tokens) - 1, unit="tok", unit_scale=True, desc="perplexity", disable=not progress) as bar:
            for input_ids, labels in sequential_windows(tokens, seq_len, stride, batch_size):
                labels = labels.to(device)
                logits = model(input_ids=input_ids.to(device)).logits  # (b, L, vocab)
                total_nats += _summed_nll(logits, labels)
                count = int((labels != IGNORE_INDEX).sum())
                scored += count
                bar.update(count)
    finally:
        model.train(was_training)

    nats = float(total_nats)
    loss = nats / scored
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": bits_per_byte(nats, n_bytes),
        "tokens": scored,
        "bytes": int(n_bytes),
        "bytes_estimated": bytes_estimated,
        "seq_len": seq_len,
        "stride": stride,
    }


def evaluate_split(
    model: torch.nn.Module,
    data_dir: str,
    split: str = "val",
    *,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate_perplexity` on ``split`` of a prepared corpus (tokens and bytes from its
    ``manifest.json``); the result also names the split and the corpus."""
    from mossnet.data import open_split, read_manifest

    manifest = read_manifest(data_dir)
    tokens = open_split(data_dir, split)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and manifest["vocab_size"] > vocab:
        raise ValueError(
            f"{data_dir} was tokenized with {manifest['vocab_size']} token ids but the model has "
            f"{vocab}: it was trained on another corpus or tokenizer"
        )
    result = evaluate_perplexity(
        model, tokens, int(manifest["splits"][split]["bytes"]), seq_len, stride, batch_size,
        device, max_tokens, progress,
    )
    return {"corpus": manifest.get("corpus"), "split": split, **result}
