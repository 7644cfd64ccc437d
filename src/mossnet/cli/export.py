"""``mossnet export``: the prefill block and the one-token decode step as portable programs.

    mossnet export runs/demo/model --out runs/demo/export                 # ONNX (+ manifest, tokenizer)
    mossnet export runs/demo/model --out runs/demo/export --format torch  # torch.export .pt2 (ExecuTorch input)
    mossnet export --preset base --out /tmp/base-onnx --quantize          # random weights, plus int8 ONNX

The ONNX directory is self-contained: ``python scripts/generate_onnx.py DIR --prompt ...``
generates text from it with onnxruntime, numpy and tokenizers only. See docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a save_pretrained directory (omit to export random weights of --preset)")
    parser.add_argument("--preset", default="tiny", help="config preset when no checkpoint is given (default tiny)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torch", "both"],
                        help="onnx (default), torch (.pt2 from torch.export), or both")
    parser.add_argument("--prefill-length", type=int, default=128,
                        help="tokens per prefill block (a fixed shape; default 128)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--quantize", action="store_true",
                        help="also write int8 dynamically quantized ONNX graphs (onnxruntime quantize_dynamic)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json (or a directory holding one) to copy next to the ONNX files; "
                             "default: the checkpoint's, if it has one")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--seed", type=int, default=0)


def _find_tokenizer(path: str | None) -> str | None:
    if path is None:
        return None
    for candidate in (path, os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer", "tokenizer.json")):
        if os.path.isfile(candidate):
            return candidate
    return None


def load_model(args):
    import torch

    from mossnet import MossNetConfig, MossNetForCausalLM

    if args.checkpoint:
        model = MossNetForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    else:
        torch.manual_seed(args.seed)
        model = MossNetForCausalLM(MossNetConfig.from_preset(args.preset))
    return model.eval()


def run(args) -> int:
    import torch

    from mossnet.export import export_decode_step, export_prefill

    tokenizer = _find_tokenizer(args.tokenizer) if args.tokenizer else _find_tokenizer(args.checkpoint)
    if args.tokenizer and tokenizer is None:
        print(f"mossnet export: no tokenizer.json at {args.tokenizer}", file=sys.stderr)
        return 2
    model = load_model(args)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    if args.format in ("torch", "both"):
        torch.export.save(export_decode_step(model, args.batch_size), os.path.join(args.out, "decode_step.pt2"))
        torch.export.save(export_prefill(model, args.prefill_length, args.batch_size), os.path.join(args.out, "prefill.pt2"))
        print(f"wrote {args.out}/decode_step.pt2 and prefill.pt2 (torch.export)")
    if args.format in ("onnx", "both"):
        try:
            from mossnet.export.onnx import Int8ExportError, export_onnx
        except ImportError as err:  # pragma: no cover
            print(f"mossnet export: ONNX export needs onnx, onnxscript and onnxruntime ({err})", file=sys.stderr)
            return 2
        try:
            manifest = export_onnx(model, args.out, prefill_length=args.prefill_length, batch_size=args.batch_size,
                                   opset=args.opset, quantize=args.quantize, tokenizer_file=tokenizer)
        except Int8ExportError as err:
            print(f"mossnet export: {err}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}: " + ", ".join(manifest["files"].values()) + ", manifest.json"
              + (", tokenizer.json" if tokenizer else " (no tokenizer: pass --tokenizer to generate text)"))
    print(f"export took {time.perf_counter() - t0:.1f} s")
    return 0
