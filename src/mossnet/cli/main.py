"""``mossnet`` command line: one subcommand per file in this package.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. Building the
parser imports every subcommand module, so those modules import torch, transformers and their
own heavy dependencies inside ``run`` (never at module level): ``mossnet --help`` and
``mossnet --version`` then answer in a fraction of a second (tests/cli/test_main_cli.py checks
that neither imports torch), and a missing optional dependency of one command does not break
the others.

Errors: this file is the one boundary where they are caught. A :class:`mossnet.errors.MossNetError`
(bad data, checkpoint, config, device, option or output directory) prints one line and exits
with its ``exit_code``; an ``OSError`` (disk full, permission denied) prints one line and exits 1;
anything else is a bug and prints one line that says so. ``MOSSNET_DEBUG=1`` re-raises instead,
with the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mossnet import __version__
from mossnet.errors import MossNetError

# command name -> (module under mossnet.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "versions, device, and which execution path each op will use"),
    "prepare-data": ("prepare_data", "build a tokenized corpus from your own text or a built-in corpus"),
    "train": ("train", "train MossNet (or a Llama / Mamba-2 baseline) on a prepared corpus"),
    "generate": ("generate", "stream text from a checkpoint"),
    "eval": ("eval", "perplexity / bits-per-byte and lm-eval benchmark tasks"),
    "bench": ("bench", "inference benchmarks (decode/prefill against SmolLM2 and Mamba-2, CPU or CUDA)"),
    "compare": ("compare", "equal-budget quality studies against Transformer and SSM baselines"),
    "export": ("export", "export prefill and decode step with torch.export / ONNX"),
    "convert": ("convert", "turn a pretrained Llama model into a MossNet, one SSM expert per attention head"),
    "distill": ("distill", "distill a Transformer teacher into a MossNet student (attention, then logits)"),
    "synth": ("synth", "teacher-sampled continuations of real prompts, as a prepared corpus for distillation"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mossnet",
        description="MossNet: a mixture-of-state-space-experts language model (arXiv 2510.26182).",
    )
    parser.add_argument("--version", action="version", version=f"mossnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        module = _load(module_name)
        if module is not None:
            module.add_arguments(p)
    return parser


def _load(module_name: str):
    try:
        return importlib.import_module(f"mossnet.cli.{module_name}")
    except ModuleNotFoundError as err:
        if err.name == f"mossnet.cli.{module_name}":
            return None  # command not built yet in this checkout
        raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Commands that take KEY=VALUE overrides accept them anywhere on the line; any other
        # unknown word is an error, as parse_args would report it.
        module = _load(args._module) if args.command else None
        words_ok = getattr(module, "ACCEPTS_OVERRIDES", False) and all("=" in w and not w.startswith("-") for w in extra)
        if not words_ok:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides or []) + extra
    if args.command is None:
        parser.print_help()
        return 0
    module = _load(args._module)
    if module is None:
        print(f"mossnet {args.command}: not available in this build", file=sys.stderr)
        return 2
    return run_command(args.command, module.run, args)


def run_command(name: str, fn, args: argparse.Namespace) -> int:
    """Run one subcommand and turn every exception into one line and an exit code."""
    debug = os.environ.get("MOSSNET_DEBUG", "") not in ("", "0")
    try:
        return int(fn(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except MossNetError as err:
        if debug:
            raise
        print(f"mossnet {name}: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if debug:
            raise
        print(f"mossnet {name}: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: still one line, with the way to see more
        if debug:
            raise
        print(f"mossnet {name}: unexpected error ({type(err).__name__}: {_one_line(err)}); "
              "run again with MOSSNET_DEBUG=1 for the traceback and please report it", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """The message of ``err``; a hint on a following indented line (an install command) stays."""
    text = str(err).strip() or type(err).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
