#!/usr/bin/env python
"""Generate text from a ``mossnet export`` ONNX directory with onnxruntime alone.

No MossNet (or torch) code: the recurrent state is a list of arrays described by
``manifest.json``; ``prefill.onnx`` consumes the prompt in blocks of ``prefill_length`` tokens,
``decode_step.onnx`` takes the rest of the prompt and then one generated token per call.
Memory is constant in the generated length.

    python scripts/generate_onnx.py runs/demo/export --prompt "ROMEO:" --max-new-tokens 60
    python scripts/generate_onnx.py DIR --prompt-ids 1,2,3 --int8 --temperature 0.8 --top-k 40

Needs: onnxruntime, numpy, tokenizers (only for --prompt / text output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


class OnnxGenerator:
    """Holds the two sessions and the state; ``generate`` yields token ids."""

    def __init__(self, directory: str, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        with open(os.path.join(directory, "manifest.json")) as f:
            self.manifest = json.load(f)
        files = self.manifest["files"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        suffix = "_int8" if int8 else ""
        if int8 and f"decode_step{suffix}" not in files:
            raise SystemExit("generate_onnx: this export has no int8 graphs (re-export with --quantize)")
        providers = ["CPUExecutionProvider"]
        self.step = ort.InferenceSession(os.path.join(directory, files["decode_step" + suffix]), opts, providers=providers)
        self.prefill = ort.InferenceSession(os.path.join(directory, files["prefill" + suffix]), opts, providers=providers)
        self.state_names = [s["name"] for s in self.manifest["states"]]
        self.block = int(self.manifest["prefill_length"])
        self.reset()

    def reset(self) -> None:
        self.states = [np.zeros(s["shape"], dtype=np.float32) for s in self.manifest["states"]]

    def _run(self, session, ids: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids.astype(np.int64), **dict(zip(self.state_names, self.states))}
        logits, *self.states = session.run(None, feed)
        return logits

    def feed_prompt(self, ids: list[int]) -> np.ndarray:
        """Consume the prompt: whole blocks through the prefill graph, the rest one by one.
        Returns the logits after its last token (batch 1)."""
        logits = None
        n_blocks = len(ids) // self.block
        for b in range(n_blocks):
            logits = self._run(self.prefill, np.array([ids[b * self.block:(b + 1) * self.block]]))
        for t in ids[n_blocks * self.block:]:
            logits = self._run(self.step, np.array([[t]]))
        return logits

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, seed: int = 0, eos_id: int | None = None):
        if not prompt_ids:
            raise SystemExit("generate_onnx: empty prompt")
        rng = np.random.default_rng(seed)
        self.reset()
        logits = self.feed_prompt(prompt_ids)
        for _ in range(max_new_tokens):
            token = sample(logits[0], temperature, top_k, rng)
            yield token
            if eos_id is not None and token == eos_id:
                return
            logits = self._run(self.step, np.array([[token]]))


def sample(logits: np.ndarray, temperature: float, top_k: int, rng) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if top_k and top_k < scaled.shape[-1]:
        cut = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < cut, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="output of `mossnet export ... --format onnx`")
    parser.add_argument("--prompt", default=None, help="prompt text (needs tokenizer.json in the directory)")
    parser.add_argument("--prompt-ids", default=None, help="comma-separated prompt token ids instead of text")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int8", action="store_true", help="use the int8 graphs (export with --quantize)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--ids", action="store_true", help="print token ids, not text")
    args = parser.parse_args(argv)

    tokenizer = None
    tok_path = os.path.join(args.directory, "tokenizer.json")
    if os.path.exists(tok_path) and not args.ids:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tok_path)
    if args.prompt_ids:
        prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    elif args.prompt is not None:
        if tokenizer is None:
            print("generate_onnx: --prompt needs tokenizer.json in the export directory (or use --prompt-ids)", file=sys.stderr)
            return 2
        prompt = tokenizer.encode(args.prompt).ids
    else:
        print("generate_onnx: pass --prompt or --prompt-ids", file=sys.stderr)
        return 2

    gen = OnnxGenerator(args.directory, int8=args.int8, threads=args.threads)
    eos = gen.manifest.get("eos_token_id")
    t0 = time.perf_counter()
    out = []
    for token in gen.generate(prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed, eos):
        out.append(token)
        if tokenizer is None:
            print(token, end=" ", flush=True)
    if tokenizer is not None:
        print((args.prompt or "") + tokenizer.decode(out))
    else:
        print()
    dt = time.perf_counter() - t0
    print(f"[{len(prompt)} prompt + {len(out)} new tokens in {dt:.2f} s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
