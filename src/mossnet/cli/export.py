"""``mossnet export``: the prefill block and the one-token decode step as portable programs.

    mossnet export runs/demo/model --out runs/demo/export                 # ONNX (+ manifest, tokenizer)
    mossnet export runs/demo/model --out runs/demo/export --format torch  # torch.export .pt2 (ExecuTorch input)
    mossnet export --preset base --out /tmp/base-onnx --quantize          # random weights, plus int8 ONNX

The ONNX directory is self-contained: ``python scripts/generate_onnx.py DIR --prompt ...``
generates text from it with onnxruntime, numpy and tokenizers only. See docs/DEPLOYMENT.md.

What is written, and when: every file goes first into ``OUT/.export.mossnet-tmp/``; only when the
whole export succeeded are the files moved into OUT, ``manifest.json`` last. A failed or
interrupted export therefore never leaves a directory that looks complete. OUT must be new,
empty or an earlier export (``--force`` to replace one, or to write into a foreign directory,
whose files are then left alone); it may not be, be inside, or contain the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from mossnet.cli.argtypes import positive_int, seed

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
MIN_OPSET = 18  # torch's ONNX exporter writes opset 18 and converts upwards from there
MANIFEST = "manifest.json"
STAGING = ".export.mossnet-tmp"
STAGING_MARK = "mossnet-export.json"  # inside STAGING: proves the folder is ours before it is removed
# Every name an export may write into OUT; nothing else there is ever touched.
EXPORT_FILES = ("decode_step.onnx", "prefill.onnx", "decode_step.int8.onnx", "prefill.int8.onnx",
                "decode_step.pt2", "prefill.pt2", "tokenizer.json", MANIFEST)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a run directory, its model/, or a save_pretrained directory "
                             "(omit to export random weights of --preset)")
    parser.add_argument("--preset", default="tiny", help="config preset when no checkpoint is given (default tiny)")
    parser.add_argument("--out", required=True,
                        help="output directory: new, empty, or an earlier export (with --force)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torch", "both"],
                        help="onnx (default), torch (.pt2 from torch.export), or both")
    parser.add_argument("--prefill-length", type=positive_int, default=128,
                        help="tokens per prefill block (a fixed shape; default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=1,
                        help="batch size the exported programs are traced for (a fixed shape; default 1)")
    parser.add_argument("--quantize", action="store_true",
                        help="also write int8 dynamically quantized ONNX graphs (onnxruntime quantize_dynamic)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json (or a directory holding one) to copy next to the ONNX files; "
                             "default: the checkpoint's, if it has one")
    parser.add_argument("--opset", type=_opset, default=MIN_OPSET,
                        help=f"ONNX opset version, >= {MIN_OPSET} and at most what the installed onnx supports "
                             f"(default {MIN_OPSET})")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the random weights when no checkpoint is given")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier export in --out, or write into a non-empty directory "
                             "(only the export's own files are written; nothing else there is touched)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the SHA-256 check of the checkpoint files and the finite-weights check")


def _opset(text: str) -> int:
    value = positive_int(text)
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_OPSET} (the oldest opset torch's exporter writes), "
                                         f"got {value}")
    return value


# ----------------------------------------------------------------------------- checks before any work


def _require_onnx(args) -> None:
    """The export extra, checked before the model is loaded: one line naming the install command."""
    import importlib.util

    from mossnet.errors import MissingExtraError, OptionError

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"mossnet export --format {args.format}", "export", " and ".join(missing))
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if args.opset > newest:
        raise OptionError(f"--opset {args.opset}: the installed onnx {onnx.__version__} supports opsets up to {newest}")


def _find_tokenizer(path: str | None) -> str | None:
    if path is None:
        return None
    for candidate in (path, os.path.join(path, "tokenizer.json"), os.path.join(path, "model", "tokenizer.json"),
                      os.path.join(path, "tokenizer", "tokenizer.json")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _is_export_dir(path: Path) -> bool:
    """An earlier export: only export files in it, among them a MossNet ONNX manifest or .pt2 programs."""
    names = {p.name for p in path.iterdir()}
    if not names or not names <= {*EXPORT_FILES, STAGING}:
        return False
    if (path / "decode_step.pt2").is_file():
        return True
    try:
        return str(json.loads((path / MANIFEST).read_text()).get("format", "")).startswith("mossnet-onnx")
    except (OSError, ValueError, AttributeError):
        return False


def _claim_out(args, model_dir: Path | None) -> Path:
    from mossnet.rundir.ownership import claim_output_dir

    return claim_output_dir(
        args.out, option="--out", force=args.force, owned=_is_export_dir, reserved=(*EXPORT_FILES, STAGING),
        owned_refusal="already holds an export; pass --force to replace it",
        read_dirs={"checkpoint": args.checkpoint, "model": model_dir})


def _check_preset(name: str) -> None:
    from mossnet.errors import ConfigError
    from mossnet.models.mossnet.configuration_mossnet import PRESETS

    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r} is not a preset; choose one of {', '.join(sorted(PRESETS))}")


def _check_tokenizer_fits(tokenizer_file: str, vocab_size: int) -> None:
    """A tokenizer with more tokens than the model's vocabulary belongs to another model."""
    from tokenizers import Tokenizer

    from mossnet.errors import CheckpointError
    from mossnet.rundir.integrity import check_tokenizer_fits

    try:
        tokenizer = Tokenizer.from_file(tokenizer_file)
    except Exception as err:  # noqa: BLE001  (tokenizers raises a bare Exception for a bad file)
        raise CheckpointError(f"{tokenizer_file} is not a readable tokenizer.json ({str(err)[:200]})") from None

    class _Sized:  # check_tokenizer_fits counts with len(), as for a transformers tokenizer
        def __len__(self):
            return tokenizer.get_vocab_size(with_added_tokens=True)

    check_tokenizer_fits(_Sized(), vocab_size, tokenizer_file)


# ----------------------------------------------------------------------------- loading


def load_model(args, model_dir: Path | None = None):
    """The checkpoint (verified unless --no-verify) or, without one, random weights of --preset."""
    import torch

    from mossnet import MossNetConfig, MossNetForCausalLM
    from mossnet.errors import CheckpointError, ConfigError

    if args.checkpoint:
        from mossnet.rundir.load import load_model as load_verified

        model = load_verified(model_dir or args.checkpoint, dtype=torch.float32,
                              verify=not getattr(args, "no_verify", False))
        if not isinstance(model, MossNetForCausalLM):
            raise CheckpointError(f"{args.checkpoint} holds a {type(model).__name__}; export supports MossNet "
                                  "checkpoints only")
        return model.eval()
    torch.manual_seed(args.seed)
    try:
        config = MossNetConfig.from_preset(args.preset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return MossNetForCausalLM(config).eval()


# ----------------------------------------------------------------------------- the export


def run(args) -> int:
    from mossnet.errors import CheckpointError

    if args.format in ("onnx", "both"):
        _require_onnx(args)
    model_dir = None
    if args.checkpoint:
        from mossnet.rundir.layout import resolve_model_dir

        model_dir = resolve_model_dir(args.checkpoint)
    else:
        _check_preset(args.preset)
    tokenizer = _find_tokenizer(args.tokenizer) if args.tokenizer else _find_tokenizer(args.checkpoint)
    if args.tokenizer and tokenizer is None:
        raise CheckpointError(f"no tokenizer.json at {args.tokenizer}")
    existed = Path(args.out).exists()
    _drop_leftover_staging(Path(args.out))
    out = _claim_out(args, model_dir)
    try:
        model = load_model(args, model_dir)
        if tokenizer:
            _check_tokenizer_fits(tokenizer, int(model.config.vocab_size))
        t0 = time.perf_counter()
        written = _export_staged(model, out, args, tokenizer)
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # we made it; leave nothing behind
        raise
    print(f"wrote {out}: " + ", ".join(written)
          + ("" if tokenizer or args.format == "torch" else " (no tokenizer: pass --tokenizer to generate text)"))
    print(f"export took {time.perf_counter() - t0:.1f} s")
    return 0


def _drop_leftover_staging(out: Path) -> None:
    """Remove the staging folder of an export that was killed, after checking it is ours."""
    staging = out / STAGING
    if (staging / STAGING_MARK).is_file():
        print(f"removing {staging}, left over from an interrupted export", file=sys.stderr)
        shutil.rmtree(staging)


def _export_staged(model, out: Path, args, tokenizer: str | None) -> list[str]:
    """Export into ``out/STAGING``, then move the files into ``out`` (manifest last). On any
    failure the staging folder is removed and ``out`` is as it was."""
    from mossnet.errors import OutputDirError

    staging = out / STAGING
    if staging.exists():  # _drop_leftover_staging removed ours: this one is someone else's
        raise OutputDirError(f"{staging} exists and was not made by `mossnet export`; move it away")
    staging.mkdir()
    (staging / STAGING_MARK).write_text(json.dumps({"pid": os.getpid()}) + "\n")
    try:
        _export_into(model, staging, args, tokenizer)
        return _commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_into(model, folder: Path, args, tokenizer: str | None) -> None:
    import torch

    from mossnet.export import export_decode_step, export_prefill

    if args.format in ("torch", "both"):
        torch.export.save(export_decode_step(model, args.batch_size), str(folder / "decode_step.pt2"))
        torch.export.save(export_prefill(model, args.prefill_length, args.batch_size), str(folder / "prefill.pt2"))
    if args.format in ("onnx", "both"):
        from mossnet.export.onnx import export_onnx

        export_onnx(model, str(folder), prefill_length=args.prefill_length, batch_size=args.batch_size,
                    opset=args.opset, quantize=args.quantize, tokenizer_file=tokenizer)


def _commit(staging: Path, out: Path) -> list[str]:
    """Move the staged files into ``out``: first drop the old manifest (so a crash mid-way never
    pairs it with new graphs) and export files the new export does not write (stale int8 graphs),
    then every file, the manifest last. Returns the names written."""
    from mossnet.rundir.atomic import fsync_tree

    fsync_tree(staging)
    new = sorted(p.name for p in staging.iterdir() if p.name != STAGING_MARK)
    old_manifest = out / MANIFEST
    if old_manifest.exists():
        old_manifest.unlink()
    for name in EXPORT_FILES:
        if name not in new and (out / name).is_file():
            (out / name).unlink()
    for name in sorted(new, key=lambda n: n == MANIFEST):
        os.replace(staging / name, out / name)
    return new
