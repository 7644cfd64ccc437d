"""``mossnet synth``: teacher-sampled continuations of real prompts, written as a prepared corpus.

Prompts are windows of a prepared corpus' train split (never evaluation-task text), decoded
with that corpus' own tokenizer; the teacher continues each one by sampling. Each document is
the prompt followed by its continuation, so the student sees the teacher's distribution in a
real context. The documents go through ``prepare_data`` with the teacher's tokenizer (splits,
fingerprint, atomic output), and the manifest records how many tokens the teacher generated.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mossnet.errors import DataError, OptionError


def synthesize(teacher_path: str, prompts: str, out: str, tokens: int, *, prompt_tokens: int = 64,
               continuation_tokens: int = 256, batch_size: int = 8, temperature: float = 1.0, top_p: float = 0.95,
               seed: int = 0, device: str = "auto", force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Generate at least ``tokens`` teacher tokens and prepare them into ``out``; returns the manifest."""
    from mossnet.data import load_tokenizer as load_corpus_tokenizer
    from mossnet.data import open_split, read_manifest
    from mossnet.data.prepare import prepare_data

    from .teacher import load_teacher

    if tokens < 1 or prompt_tokens < 1 or continuation_tokens < 1 or batch_size < 1:
        raise OptionError("--tokens, --prompt-tokens, --continuation-tokens and --batch-size must be >= 1")
    read_manifest(prompts)
    source = open_split(prompts, "train", verify=True)
    if len(source) <= prompt_tokens:
        raise DataError(f"the train split of {prompts} has {len(source)} tokens, too few for {prompt_tokens}-token prompts")
    corpus_tok = load_corpus_tokenizer(prompts)
    teacher, teacher_tok = load_teacher(teacher_path, device)
    started = time.perf_counter()
    docs, generated = _generate(teacher, teacher_tok, corpus_tok, source, tokens, prompt_tokens, continuation_tokens,
                                batch_size, temperature, top_p, seed, progress)
    seconds = time.perf_counter() - started
    staging = Path(out).resolve().parent / f".{Path(out).name}.synth.mossnet-tmp.jsonl"
    try:
        staging.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        prepare_data(out, inputs=[str(staging)], tokenizer=teacher_path, progress=progress, force=force)
    finally:
        staging.unlink(missing_ok=True)
    return _record(out, teacher_path, prompts, generated, len(docs), seconds)


def _generate(teacher, teacher_tok, corpus_tok, source, tokens, prompt_tokens, continuation_tokens, batch_size,
              temperature, top_p, seed, progress) -> tuple[list[str], int]:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    device = next(teacher.parameters()).device
    pad = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else teacher_tok.eos_token_id
    teacher_tok.padding_side = "left"
    if teacher_tok.pad_token is None:
        teacher_tok.pad_token = teacher_tok.eos_token
    docs, generated = [], 0
    with tqdm(total=tokens, unit="tok", unit_scale=True, desc="teacher tokens", disable=not progress) as bar:
        while generated < tokens:
            starts = rng.integers(0, len(source) - prompt_tokens, size=batch_size)
            texts = [corpus_tok.decode(np.asarray(source[s:s + prompt_tokens]).tolist(), skip_special_tokens=True)
                     for s in starts]
            batch = teacher_tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = teacher.generate(**batch, max_new_tokens=continuation_tokens, do_sample=True,
                                       temperature=temperature, top_p=top_p, pad_token_id=pad)
            new = out[:, batch["input_ids"].shape[1]:]
            for prompt, ids in zip(texts, new.tolist()):
                ids = [i for i in ids if i != pad]
                generated += len(ids)
                docs.append(prompt + teacher_tok.decode(ids, skip_special_tokens=True))
            bar.update(min(sum(len(r) for r in new.tolist()), tokens - bar.n))
    return docs, generated


def _record(out: str, teacher: str, prompts: str, generated: int, documents: int, seconds: float) -> dict[str, Any]:
    """Add the synthetic-token record to the manifest (atomically, through write_manifest)."""
    from mossnet.data import read_manifest
    from mossnet.data.token_store import write_manifest

    manifest = read_manifest(out)
    manifest["synthetic"] = {"teacher": str(teacher), "prompts_from": str(prompts), "generated_tokens": generated,
                             "documents": documents, "generation_seconds": round(seconds, 1),
                             "note": "each document is a real prompt followed by the teacher's sampled continuation"}
    write_manifest(out, manifest)
    return read_manifest(out)
