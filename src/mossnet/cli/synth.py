"""``mossnet synth --teacher TEACHER --prompts DATA --out DATA2 --tokens N``: teacher-sampled
continuations of real prompts, written as a prepared corpus for distillation (the manifest
records the number of generated tokens). See ``mossnet.distill.synth``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mossnet.cli import argtypes as t

    parser.add_argument("--teacher", required=True, metavar="PATH", help="a Llama-family model directory or GGUF file")
    parser.add_argument("--prompts", required=True, metavar="DATA",
                        help="a prepared corpus whose train split gives the prompts (never evaluation-task text)")
    parser.add_argument("--out", required=True, help="output directory (a prepared corpus)")
    parser.add_argument("--tokens", type=t.positive_int, required=True, help="teacher tokens to generate")
    parser.add_argument("--prompt-tokens", type=t.positive_int, default=64, help="tokens per prompt (default 64)")
    parser.add_argument("--continuation-tokens", type=t.positive_int, default=256,
                        help="tokens sampled per prompt (default 256)")
    parser.add_argument("--batch-size", type=t.positive_int, default=8, help="prompts per generate call (default 8)")
    parser.add_argument("--temperature", type=t.positive_float, default=1.0, help="sampling temperature (default 1)")
    parser.add_argument("--top-p", type=t.probability, default=0.95, help="nucleus sampling (default 0.95)")
    parser.add_argument("--seed", type=t.seed, default=0, help="prompt choice and sampling seed")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--force", action="store_true", help="replace an existing prepared corpus in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from mossnet.distill.synth import synthesize

    manifest = synthesize(args.teacher, args.prompts, args.out, args.tokens, prompt_tokens=args.prompt_tokens,
                          continuation_tokens=args.continuation_tokens, batch_size=args.batch_size,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed, device=args.device,
                          force=args.force, progress=not args.no_progress)
    s = manifest["synthetic"]
    print(f"wrote {args.out}: {s['generated_tokens']:,} teacher tokens in {s['documents']:,} documents "
          f"({s['generation_seconds']:.0f} s of generation)")
    return 0
