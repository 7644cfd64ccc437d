"""Recall probes for any causal LM: where a fixed-size state loses to attention.

- :func:`repeated_passage_loss`: the loss on the second copy of a passage placed twice in a row.
  A model that can look back copies the second copy almost for free; a model that only keeps a
  summary of the past does not. Reported beside the first copy's loss, the same tokens seen fresh.
- :func:`passkey_retrieval`: a five-digit key hidden at some depth of a long, repetitive filler;
  the model must say it at the end. Scored by greedy generation, at several context lengths.

Both need only ``model(input_ids=...).logits`` and ``model.generate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_INTRO = ("There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
                 "I will quiz you about the important information there. ")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUESTION = "What is the pass key? The pass key is"


@torch.inference_mode()
def repeated_passage_loss(model: Any, tokens: np.ndarray, *, passages: int = 32, passage_len: int = 256,
                          batch_size: int = 8, seed: int = 0, starts: Sequence[int] | None = None,
                          autocast: Any = None) -> dict[str, float]:
    """Mean next-token loss (nats) on the first and on the second copy of ``passages`` windows of
    ``tokens`` (held-out text), each fed as [passage, passage]: random windows (``seed``), or the
    ones starting at ``starts``. ``autocast``: a context-manager factory the forward runs under.

    The first token of each copy is not scored (its prediction depends on what came before it), so
    both copies are scored on the same ``passage_len - 1`` tokens.
    """
    if len(tokens) <= passage_len:
        raise ValueError(f"need more than {passage_len} tokens to cut passages, got {len(tokens)}")
    if starts is None:
        starts = np.random.default_rng(seed).integers(0, len(tokens) - passage_len, size=passages)
    passages = len(starts)
    device = next(model.parameters()).device
    first, second = [], []
    for at in range(0, passages, batch_size):
        windows = np.stack([np.asarray(tokens[s : s + passage_len]) for s in starts[at : at + batch_size]])
        ids = torch.from_numpy(np.concatenate([windows, windows], axis=1).astype(np.int64)).to(device)  # (B, 2L)
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(input_ids=ids, use_cache=False).logits.float()
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, 2L-1)
        first.append(losses[:, : passage_len - 1].mean(dim=1))
        second.append(losses[:, passage_len:].mean(dim=1))
    first_mean, second_mean = torch.cat(first).mean().item(), torch.cat(second).mean().item()
    return {"first_copy_loss": first_mean, "second_copy_loss": second_mean, "passages": passages,
            "passage_len": passage_len}


def passkey_prompt(tokenizer: Any, context_tokens: int, key: str, depth: float) -> list[int]:
    """Token ids of a prompt of about ``context_tokens`` tokens with ``key`` at ``depth`` (0 = start of
    the filler, 1 = its end), ending with the question."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    intro, needle, question = encode(PASSKEY_INTRO), encode(PASSKEY_NEEDLE.format(key=key)), encode(PASSKEY_QUESTION)
    filler_unit = encode(PASSKEY_FILLER)
    room = max(0, context_tokens - len(intro) - len(needle) - len(question))
    units = room // len(filler_unit)
    before = round(units * depth)
    ids = intro + filler_unit * before + needle + filler_unit * (units - before) + question
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([bos] if bos is not None else []) + ids


@torch.inference_mode()
def passkey_retrieval(model: Any, tokenizer: Any, context_lengths: Sequence[int], *, trials: int = 10,
                      seed: int = 0) -> dict[str, Any]:
    """Share of trials whose greedy answer starts with the key, per context length.

    Each length runs ``trials`` prompts with random keys at depths spread evenly over (0, 1).
    """
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    results: dict[str, Any] = {}
    for length in context_lengths:
        hits, answers = 0, []
        for trial in range(trials):
            key = str(rng.integers(10_000, 100_000))
            depth = (trial + 0.5) / trials
            ids = torch.tensor([passkey_prompt(tokenizer, length, key, depth)], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                 do_sample=False, pad_token_id=_pad_id(tokenizer))
            answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            hit = answer.strip().startswith(key)
            hits += hit
            answers.append({"depth": round(depth, 3), "key": key, "answer": answer, "hit": hit})
        results[str(length)] = {"accuracy": hits / trials, "trials": trials, "prompt_tokens": int(ids.shape[1]),
                                "answers": answers}
    return results


def _pad_id(tokenizer: Any) -> int:
    from .loglikelihood import pad_token_id

    return pad_token_id(tokenizer)
