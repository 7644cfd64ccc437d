"""``mossnet generate DIR --prompt "..."``: stream text from a checkpoint to the terminal.

Works for any causal LM directory that transformers can load (MossNet, and the Llama / Mamba-2
baselines written by ``mossnet train --arch``). Temperature 0 means greedy decoding.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="DIR", help="a checkpoint directory (from `mossnet train`)")
    parser.add_argument("--prompt", default="", help="text to continue (default: the tokenizer's BOS/EOS token)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible output)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: DIR)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="auto: bf16 on CUDA, fp32 on CPU")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

    import mossnet.models.mossnet  # noqa: F401  (registers MossNet with the Auto classes)

    path = Path(args.model)
    if not (path / "config.json").is_file():
        print(f"mossnet generate: {path} is not a model directory (no config.json)", file=sys.stderr)
        return 2
    if args.max_new_tokens < 1:
        print("mossnet generate: --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    if args.temperature < 0:
        print("mossnet generate: --temperature must be >= 0", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    dtype = torch.float32
    if args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda"):
        dtype = torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or path)
    except Exception as err:
        print(f"mossnet generate: cannot load a tokenizer from {args.tokenizer or path}: {err}\n"
              "(pass --tokenizer DATA_DIR/tokenizer)", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of the text
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()

    if args.prompt:
        input_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    else:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            print("mossnet generate: the tokenizer has no BOS/EOS token; pass --prompt", file=sys.stderr)
            return 2
        input_ids = torch.tensor([[start]])
    if input_ids.shape[1] == 0:
        print("mossnet generate: the prompt encodes to no tokens", file=sys.stderr)
        return 2
    if args.seed is not None:
        torch.manual_seed(args.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(args.seed)

    eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_token_id
    sample = args.temperature > 0
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=sample,
                      pad_token_id=eos if eos is not None else 0, eos_token_id=eos,
                      repetition_penalty=args.repetition_penalty)
    if sample:
        gen_kwargs.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or None)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    with torch.no_grad():
        model.generate(input_ids.to(device), attention_mask=torch.ones_like(input_ids).to(device),
                       streamer=streamer, **gen_kwargs)
    sys.stdout.flush()
    return 0
