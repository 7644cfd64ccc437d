"""Log-likelihood of continuations: the one place where a model runs to score benchmark answers.

Needs only torch and a tokenizer, not lm-eval: the lm-eval adapter (``lm_eval_adapter.py``) and the
frozen request files (``request_file.py``) both score through these functions, so the two can
never disagree about tokenization or arithmetic.

Tokenization follows lm-eval's causal-LM rules (its ``TemplateLM``), which decide the numbers
everyone reports:

- trailing spaces of a context move to the front of the continuation;
- context + continuation is tokenized as one string and split where the context's own tokens end;
- an empty context is replaced by the prefix token (BOS, else EOS);
- sequences longer than ``max_length + 1`` tokens lose tokens from the left of the context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str,
                prefix_token_id: int) -> tuple[list[int], list[int]]:
    """``(context_ids, continuation_ids)`` as lm-eval's causal backends make them.

    ``encode`` is the tokenizer call used for whole strings (with the tokenizer's default special
    tokens, as lm-eval's ``hf`` backend does); ``prefix_token_id`` conditions an empty context.
    """
    if context == "":
        ids = encode_without_special_tokens(encode, continuation)
        # An empty context is conditioned on the prefix token, unless the text already starts with it.
        return ([prefix_token_id], ids) if ids[0] != prefix_token_id else (ids[:1], ids[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


def encode_without_special_tokens(encode: Callable[..., list[int]], text: str) -> list[int]:
    try:
        return encode(text, add_special_tokens=False)
    except TypeError:  # a plain callable without the keyword
        return encode(text)


@torch.inference_mode()
def score_continuations(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    n_scored: Sequence[int],
    pad_id: int = 0,
) -> list[tuple[float, bool]]:
    """Log-probability of the last ``n_scored[i]`` tokens of each sequence, in one forward pass.

    Args:
        sequences: token ids; sequence i is ``prefix + scored`` with ``len(scored) = n_scored[i]``
            and a non-empty prefix (the model predicts token t from tokens < t).
        n_scored: how many trailing tokens of each sequence to score.
        pad_id: id used for right padding (its value never affects the scores).

    Returns:
        for each sequence ``(sum of log p(token) over the scored tokens, all scored tokens are the
        argmax prediction)``; log-softmax in float32 whatever the model's dtype.
    """
    device = next(model.parameters()).device
    lengths = [len(s) - 1 for s in sequences]  # model inputs drop the last token
    width = max(lengths)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : lengths[row]] = torch.as_tensor(seq[:-1], dtype=torch.long)
        attention_mask[row, : lengths[row]] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits

    totals, greedy = [], []
    for row, (seq, n) in enumerate(zip(sequences, n_scored, strict=True)):
        if not 0 < n <= lengths[row]:
            raise ValueError(f"cannot score {n} tokens of a {len(seq)}-token sequence")
        # logits at input position p predict token p + 1: the scored tokens seq[-n:] are
        # predicted at positions lengths[row] - n ... lengths[row] - 1.
        log_probs = F.log_softmax(logits[row, lengths[row] - n : lengths[row]].float(), dim=-1)  # (n, vocab)
        targets = torch.as_tensor(seq[-n:], dtype=torch.long, device=log_probs.device)
        totals.append(log_probs.gather(-1, targets[:, None]).sum())
        greedy.append((log_probs.argmax(dim=-1) == targets).all())
    # One device-to-host copy per batch, not two per row.
    totals_host, greedy_host = torch.stack(totals).tolist(), torch.stack(greedy).tolist()
    return [(float(t), bool(g)) for t, g in zip(totals_host, greedy_host, strict=True)]


def score_token_requests(
    model: torch.nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    max_length: int,
    pad_id: int,
    progress: Any = None,
    on_result: Callable[[int, tuple[float, bool]], None] | None = None,
) -> list[tuple[float, bool]]:
    """Score ``(context_ids, continuation_ids)`` pairs in batches, longest first.

    Longest first: each batch holds similar lengths (little padding), and a memory error shows up
    in the first batch rather than after an hour. ``progress`` is a tqdm-like object (``update``);
    ``on_result(index, score)`` is called as each request is scored.
    """
    sequences, n_scored = [], []
    for context, continuation in requests:
        if not continuation or len(continuation) > max_length:
            raise ValueError(f"continuation of {len(continuation)} tokens cannot be scored "
                             f"with max_length={max_length}")
        sequences.append((context + continuation)[-(max_length + 1):])
        n_scored.append(len(continuation))
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    results: list[tuple[float, bool] | None] = [None] * len(sequences)
    for batch in batches(order, batch_size):
        scores = score_continuations(model, [sequences[i] for i in batch], [n_scored[i] for i in batch], pad_id)
        for i, score in zip(batch, scores, strict=True):
            results[i] = score
            if on_result is not None:
                on_result(i, score)
        if progress is not None:
            progress.update(len(batch))
    return results  # type: ignore[return-value]


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else 0 (its value never
    changes a score)."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)


def prefix_token_id(tokenizer: Any) -> int:
    """The token that conditions an empty context: BOS if the tokenizer has one, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def context_length(model: Any, default: int = 2048) -> int:
    """The model's context length: the first positive of its config's ``max_position_embeddings``,
    ``n_positions``, ``max_sequence_length``, ``seq_length``; else ``default``."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def batches(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    """Consecutive slices of ``items``, ``size`` long (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
