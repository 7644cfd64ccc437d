"""``--tokenizer PATH`` (folders, tokenizer.json, model and run folders, prepared corpora, GGUF),
the document separator, and tokenizer fingerprints."""

from __future__ import annotations

import json
import shutil

import pytest
from tokenizers import Tokenizer

from mossnet.data.errors import DataError
from mossnet.data.tokenizer import (
    fingerprint_of_file,
    separator_token,
    tokenizer_fingerprint,
    tokenizer_from_path,
)


def test_fingerprint_is_the_same_for_every_form_of_one_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    file = smol_tokenizer_dir / "tokenizer.json"
    backend = Tokenizer.from_file(str(file))
    wrapped = AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))
    value = tokenizer_fingerprint(backend)
    assert len(value) == 64 and int(value, 16) >= 0
    assert tokenizer_fingerprint(wrapped) == value == fingerprint_of_file(file)


def test_fingerprint_ignores_serialisation(smol_tokenizer_dir, tmp_path):
    spec = json.loads((smol_tokenizer_dir / "tokenizer.json").read_text())
    # Merges as legacy "a b" strings, keys in reverse order, another indent: the same tokenizer.
    spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]
    spec["model"] = dict(reversed(list(spec["model"].items())))
    spec["model"]["vocab"] = dict(reversed(list(spec["model"]["vocab"].items())))
    rewritten = tmp_path / "tokenizer.json"
    rewritten.write_text(json.dumps(dict(reversed(list(spec.items()))), indent=4))
    expected = fingerprint_of_file(smol_tokenizer_dir / "tokenizer.json")
    assert fingerprint_of_file(rewritten) == expected
    assert tokenizer_fingerprint(Tokenizer.from_file(str(rewritten))) == expected


@pytest.mark.parametrize("change", ["swap two merges", "renumber a token", "unmark a special token", "add a token"])
def test_fingerprint_changes_with_what_ids_mean(smol_tokenizer_dir, tmp_path, change):
    spec = json.loads((smol_tokenizer_dir / "tokenizer.json").read_text())
    model = spec["model"]
    if change == "swap two merges":
        model["merges"][3], model["merges"][4] = model["merges"][4], model["merges"][3]
    elif change == "renumber a token":
        a, b = (token for token, i in model["vocab"].items() if i in (100, 101))
        model["vocab"][a], model["vocab"][b] = model["vocab"][b], model["vocab"][a]
    elif change == "unmark a special token":
        spec["added_tokens"][2]["special"] = False
    else:
        spec["added_tokens"].append({**spec["added_tokens"][0], "id": len(model["vocab"]), "content": "<|new|>"})
    changed = tmp_path / "tokenizer.json"
    changed.write_text(json.dumps(spec))
    assert fingerprint_of_file(changed) != fingerprint_of_file(smol_tokenizer_dir / "tokenizer.json")


def test_separator_prefers_endoftext_over_an_instruct_eos(smol_tokenizer_dir):
    tok = tokenizer_from_path(smol_tokenizer_dir)
    assert tok.eos_token == "<|im_end|>"
    assert separator_token(tok) == ("<|endoftext|>", 0)
    assert separator_token(tok, "<|im_end|>") == ("<|im_end|>", 2)
    with pytest.raises(DataError, match="--eos-token '<eos>' is not a token of this tokenizer"):
        separator_token(tok, "<eos>")


def test_tokenizer_from_every_kind_of_path(smol_tokenizer_dir, tmp_path):
    expected = fingerprint_of_file(smol_tokenizer_dir / "tokenizer.json")
    # a run directory: RUN/model holds config.json and the tokenizer
    run = tmp_path / "run"
    shutil.copytree(smol_tokenizer_dir, run / "model")
    (run / "model" / "config.json").write_text("{}")
    # a prepared corpus: DIR/tokenizer/
    prepared = tmp_path / "prepared"
    shutil.copytree(smol_tokenizer_dir, prepared / "tokenizer")
    for path in (smol_tokenizer_dir, smol_tokenizer_dir / "tokenizer.json", run, run / "model", prepared):
        assert tokenizer_fingerprint(tokenizer_from_path(path)) == expected, path


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty", None, "holds no tokenizer"),
        ("notes", {"notes.txt": "x"}, "holds no tokenizer"),
        ("tok.txt", "x", "is not a tokenizer file"),
        ("tok.json", '{"model": 3}', "is not a tokenizers JSON file"),
        ("missing", "absent", "no such file or directory"),
    ],
)
def test_a_path_without_a_tokenizer_is_one_clear_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None or isinstance(content, dict):
        path.mkdir()
        for file, text in (content or {}).items():
            (path / file).write_text(text)
    elif content != "absent":
        path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        tokenizer_from_path(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_smollm2_gguf_tokenizer(tmp_path, smollm2_gguf):
    """SmolLM2 ships only as GGUF: its tokenizer loads (about 12 s on a 2-core CPU)."""
    tok = tokenizer_from_path(smollm2_gguf)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert separator_token(tok) == ("<|endoftext|>", 0)
    tok.save_pretrained(str(tmp_path))
    assert fingerprint_of_file(tmp_path / "tokenizer.json") == tokenizer_fingerprint(tok)
    assert tok.backend_tokenizer.encode("Hello world", add_special_tokens=False).ids == \
        Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("Hello world", add_special_tokens=False).ids
