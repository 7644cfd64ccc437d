"""``mossnet convert``: turn a pretrained Llama model into a MossNet, head by head (spec section 8).

    mossnet convert path/to/llama-dir --out runs/converted
    mossnet convert SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol-dense
    mossnet convert SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol-routed --experts-per-token 3 \\
        --state-update routed

OUT is a run directory: OUT/model loads with ``AutoModelForCausalLM.from_pretrained(OUT/model,
trust_remote_code=True)`` and is what ``mossnet distill --student`` takes. docs/CONVERSION.md says
what is copied, what is initialised and how, and what is lost (RoPE, softmax).
"""

from __future__ import annotations

import argparse
import sys

from mossnet.cli.argtypes import positive_int, seed
from mossnet.runtime import device_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("teacher", help="a transformers LlamaForCausalLM directory, or a .gguf file transformers "
                                        "loads (needs the gguf package)")
    parser.add_argument("--out", required=True, help="run directory to write (new, empty, or an earlier "
                                                     "conversion with --force)")
    parser.add_argument("--experts-per-token", type=positive_int, default=None, metavar="K",
                        help="experts each token uses (default: every query head, a dense conversion)")
    parser.add_argument("--state-update", choices=["all", "routed"], default="all",
                        help="all (default): every expert sees every token; routed: an expert sees only "
                             "the tokens routed to it")
    parser.add_argument("--calibration-text", default="shakespeare", metavar="CORPUS|FILE",
                        help="text the new parts are calibrated on: a corpus name (shakespeare, kjv, pydocs: "
                             "train split; the val split measures) or a UTF-8 file (first 90%% / last 10%%); "
                             "default shakespeare")
    parser.add_argument("--calibration-sequences", type=positive_int, default=4,
                        help="sequences in the calibration and held-out batches (default 4)")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the text windows and of a routed router")
    parser.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--force", action="store_true", help="replace an earlier conversion in --out, or write "
                                                             "into a non-empty foreign directory (only MossNet's "
                                                             "own entries are written)")


def run(args: argparse.Namespace) -> int:
    from mossnet import runtime
    from mossnet.convert import ConvertOptions, convert_teacher
    from mossnet.rundir.model_card import command_line

    device = runtime.resolve_device(args.device)
    options = ConvertOptions(
        experts_per_token=args.experts_per_token, state_update=args.state_update,
        calibration_text=args.calibration_text, sequences=args.calibration_sequences, seq_len=args.seq_len,
        seed=args.seed,
    )
    model_dir = convert_teacher(args.teacher, args.out, options, device=device, force=args.force,
                                made_by=command_line(), log=lambda line: print(line, file=sys.stderr, flush=True))
    print(model_dir)
    return 0
