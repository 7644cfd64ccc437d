"""``mossnet generate DIR --prompt "..."``: stream text from a checkpoint to the terminal.

Works for any causal LM directory that transformers can load (MossNet, and the Llama / Mamba-2
baselines written by ``mossnet train --arch``); DIR may be a run directory or its ``model/``.
Temperature 0 means greedy decoding. The checkpoint is verified (SHA-256, finite weights)
unless ``--no-verify``, and its tokenizer is checked against the model's vocabulary.
"""

from __future__ import annotations

import argparse
import sys

from mossnet.cli.argtypes import nonnegative_float, nonnegative_int, positive_float, positive_int, probability, seed
from mossnet.runtime import DTYPE_CHOICES, device_name, dtype_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="DIR", help="a run directory (from `mossnet train`), its model/, "
                        "or any Hugging Face causal LM folder")
    parser.add_argument("--prompt", default="", help="text to continue (default: the tokenizer's BOS/EOS token)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=200, help="tokens to generate (default 200)")
    parser.add_argument("--temperature", type=nonnegative_float, default=0.8,
                        help="sampling temperature; 0 = greedy (default 0.8)")
    parser.add_argument("--top-p", type=probability, default=0.95,
                        help="nucleus sampling: keep the smallest set of tokens whose probability reaches P, "
                             "in (0, 1] (default 0.95)")
    parser.add_argument("--top-k", type=nonnegative_int, default=0,
                        help="keep only the K most likely tokens; 0 = no top-k filter (default)")
    parser.add_argument("--repetition-penalty", type=positive_float, default=1.0,
                        help="> 1 discourages repeating tokens, 1 = off (default 1.0)")
    parser.add_argument("--seed", type=seed, default=None, help="seed for sampling (reproducible output)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--dtype", type=dtype_name, default="auto", metavar="|".join(DTYPE_CHOICES),
                        help="weights dtype; auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the SHA-256 check of the checkpoint files and the finite-weights check")


def run(args: argparse.Namespace) -> int:
    import torch

    from mossnet import runtime
    from mossnet.errors import CheckpointError
    from mossnet.rundir.layout import resolve_model_dir
    from mossnet.rundir.load import load_model, load_tokenizer

    device = runtime.resolve_device(args.device)
    dtype = runtime.resolve_dtype(args.dtype, device)
    model_dir = resolve_model_dir(args.model)  # a missing or incomplete folder: one line, before anything loads
    tokenizer_dir = args.tokenizer or args.model
    from mossnet.eval.loading import has_tokenizer

    if args.tokenizer is None and not has_tokenizer(args.model):
        raise CheckpointError(f"no tokenizer in {model_dir}; pass --tokenizer DIR (e.g. the prepared data's tokenizer/)")
    from transformers import TextStreamer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of the text
    model = load_model(model_dir, dtype=dtype, device=device, verify=not args.no_verify)
    tokenizer = load_tokenizer(tokenizer_dir, model=model)

    input_ids = _prompt_ids(tokenizer, args.prompt)
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


def _prompt_ids(tokenizer, prompt: str):
    """(1, T) int64 ids of ``prompt``, or of the tokenizer's BOS (else EOS) token when it is empty."""
    import torch

    from mossnet.errors import OptionError

    if prompt:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        if input_ids.shape[1] == 0:
            raise OptionError("--prompt encodes to no tokens")
        return input_ids
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise OptionError("the tokenizer has no BOS/EOS token to start from; pass --prompt")
    return torch.tensor([[start]])
