"""``mossnet prepare-data`` on bad input: one line, a non-zero exit, no traceback, and never a
directory that looks complete; interrupted runs keep the previous corpus."""

from __future__ import annotations

import json

import pytest

from mossnet.cli.main import main
from mossnet.data import corpus_dir
from mossnet.data.shards import ShardWriter
from mossnet.data.token_store import read_manifest
from mossnet.data.verify import verify_corpus


def _good_jsonl(path, n=5):
    path.write_text("".join(json.dumps({"text": f"document {i} says hello"}) + "\n" for i in range(n)))
    return path


def _case_malformed_json(tmp):
    path = _good_jsonl(tmp / "bad.jsonl")
    with path.open("a") as f:
        f.write('{"text": "fine"}\n{"text": "broken" oops}\n')
    return ["--input", str(path)], r"bad\.jsonl:7: not valid JSON \(Expecting ',' delimiter at column 19\)"


def _case_missing_field(tmp):
    path = tmp / "other.jsonl"
    path.write_text(json.dumps({"content": "x", "id": 1}) + "\n")
    return ["--input", str(path)], r"other\.jsonl:1: no field 'text'; the keys present are \['content', 'id'\]"


def _case_missing_parquet_column(tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"]}), tmp / "t.parquet")
    return ["--input", str(tmp / "t.parquet")], r"t\.parquet: no field 'text'; the columns present are \['body'\]"


def _case_unknown_type(tmp):
    (tmp / "paper.pdf").write_bytes(b"%PDF-1.4")
    return ["--input", str(tmp / "paper.pdf")], r"paper\.pdf: unknown file type; expected \.txt"


def _case_empty_file(tmp):
    (tmp / "empty.txt").write_text("  \n")
    return ["--input", str(tmp / "empty.txt")], r"the input holds no text \(1 empty documents skipped\)"


def _case_empty_folder(tmp):
    (tmp / "folder").mkdir()
    return ["--input", str(tmp / "folder")], r"folder: no \.txt, \.md, .* file or saved dataset found"


def _case_missing_input(tmp):
    return ["--input", str(tmp / "nope.txt")], r"--input .*nope\.txt: no such file or directory"


def _case_glob_without_match(tmp):
    return ["--input", str(tmp / "*.jsonl")], r"the pattern matches no file"


def _case_tokenizer_without_tokenizer(tmp):
    (tmp / "tok").mkdir()
    return ["--input", str(_good_jsonl(tmp / "a.jsonl")), "--tokenizer", str(tmp / "tok")], r"tok holds no tokenizer"


def _case_strict_utf8(tmp):
    (tmp / "latin1.txt").write_bytes("café".encode("latin-1"))
    return ["--input", str(tmp / "latin1.txt"), "--strict"], r"latin1\.txt: invalid UTF-8 at byte 3"


def _case_strict_utf8_jsonl(tmp):
    (tmp / "bad.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    return ["--input", str(tmp / "bad.jsonl"), "--strict"], r"bad\.jsonl:2: invalid UTF-8 at byte 13"


def _case_text_field_not_a_string(tmp):
    (tmp / "n.jsonl").write_text('{"text": 42}\n')
    return ["--input", str(tmp / "n.jsonl")], r"n\.jsonl:1: field 'text' is a int, not a string"


def _case_corpus_and_input(tmp):
    return ["--input", str(_good_jsonl(tmp / "a.jsonl")), "--corpus", "kjv"], r"either --corpus or --input, not both"


def _case_vocab_size_with_a_path(tmp):
    return (["--input", str(_good_jsonl(tmp / "a.jsonl")), "--tokenizer", "gpt2", "--vocab-size", "300"],
            r"--vocab-size applies to --tokenizer bpe only")


def _case_unknown_eos_token(tmp):
    return (["--input", str(_good_jsonl(tmp / "a.jsonl")), "--eos-token", "<|nope|>"],
            r"--eos-token '<\|nope\|>' is not a token of this tokenizer")


def _case_out_is_a_file(tmp):
    (tmp / "out").write_text("mine")
    return ["--input", str(_good_jsonl(tmp / "a.jsonl"))], r"--out .*out is a file, not a directory"


def _case_out_not_writable(tmp):
    (tmp / "blocker").write_text("a file where a folder would have to be")
    return (["--input", str(_good_jsonl(tmp / "a.jsonl")), "--out", str(tmp / "blocker" / "sub")],
            r"--out .*blocker/sub cannot be created")


def _case_out_holds_other_files(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("precious")
    return ["--input", str(_good_jsonl(tmp / "a.jsonl"))], r"--out .*out is not empty and was not written by"


def _case_out_inside_input(tmp):
    (tmp / "texts").mkdir()
    (tmp / "texts" / "a.txt").write_text("hello")
    return (["--input", str(tmp / "texts"), "--out", str(tmp / "texts" / "prepared")],
            r"is inside the --input .*texts directory")


CASES = {name.removeprefix("_case_"): fn for name, fn in globals().items() if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_nothing_that_looks_complete(case, tmp_path, capsys, smol_tokenizer_dir):
    args, message = CASES[case](tmp_path)
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    if "--tokenizer" not in args:
        args = [*args, "--tokenizer", str(smol_tokenizer_dir)]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code = main(["prepare-data", *args, "--no-progress", "--workers", "1"])
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err and "unexpected error" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mossnet prepare-data: "), err
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not list(tmp_path.rglob("manifest.json"))  # nothing that looks like a prepared corpus
    assert not list(tmp_path.rglob("*.mossnet-tmp"))  # no staging left behind
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before  # nothing created (no empty --out either), nothing touched


@pytest.fixture
def prepared_once(tmp_path, smol_tokenizer_dir):
    out = tmp_path / "out"
    source = _good_jsonl(tmp_path / "a.jsonl", 30)
    assert main(["prepare-data", "--input", str(source), "--out", str(out), "--tokenizer", str(smol_tokenizer_dir),
                 "--no-progress", "--workers", "1"]) == 0
    return out, source


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failure_while_replacing_keeps_the_previous_corpus(prepared_once, tmp_path, capsys, smol_tokenizer_dir):
    out, _ = prepared_once
    before = _snapshot(out)
    bad = _good_jsonl(tmp_path / "b.jsonl", 40)
    with bad.open("a") as f:
        f.write("{oops\n")
    code = main(["prepare-data", "--input", str(bad), "--out", str(out), "--tokenizer", str(smol_tokenizer_dir),
                 "--force", "--no-progress", "--workers", "1"])
    assert code == 2 and "b.jsonl:41: not valid JSON" in capsys.readouterr().err
    assert _snapshot(out) == before
    verify_corpus(out, progress=False)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_keeps_the_previous_corpus(prepared_once, tmp_path, monkeypatch, capsys, smol_tokenizer_dir, workers):
    out, source = prepared_once
    before = _snapshot(out)
    real_write = ShardWriter.write

    def interrupted(self, ids):
        real_write(self, ids)
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", interrupted)
    code = main(["prepare-data", "--input", str(source), "--out", str(out), "--tokenizer", str(smol_tokenizer_dir),
                 "--force", "--no-progress", "--workers", str(workers)])
    assert code == 130
    assert _snapshot(out) == before


def test_a_crash_inside_the_commit_leaves_no_manifest_and_the_next_run_recovers(prepared_once, monkeypatch, capsys,
                                                                                smol_tokenizer_dir):
    out, source = prepared_once
    (out / "user_notes.txt").write_text("mine")  # a user's file in a forced directory is never touched

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corpus_dir, "write_manifest", disk_full)
    args = ["prepare-data", "--input", str(source), "--out", str(out), "--tokenizer", str(smol_tokenizer_dir),
            "--force", "--no-progress", "--workers", "1"]
    assert main(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()  # not complete, so never read as a corpus
    monkeypatch.undo()
    assert main(args) == 0
    assert "left over from an interrupted prepare-data" in capsys.readouterr().err
    manifest = read_manifest(out)
    names = {shard["file"] for entry in manifest["splits"].values() for shard in entry["shards"]}
    assert sorted(p.name for p in out.iterdir()) == sorted(names | {"manifest.json", "tokenizer", "user_notes.txt"})
    assert (out / "user_notes.txt").read_text() == "mine"
    verify_corpus(out, progress=False)


def test_a_staging_folder_of_someone_else_is_refused_and_kept(prepared_once, capsys, smol_tokenizer_dir):
    out, source = prepared_once
    (out / corpus_dir.STAGING).mkdir()  # a folder of that name without the mark is not ours
    (out / corpus_dir.STAGING / "x").write_text("someone's")
    before = _snapshot(out)
    assert main(["prepare-data", "--input", str(source), "--out", str(out), "--tokenizer", str(smol_tokenizer_dir),
                 "--force", "--no-progress", "--workers", "1"]) == 2
    assert "was not written by mossnet prepare-data: move it away" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_force_replaces_a_larger_corpus_and_removes_its_extra_shards(prepared_once, tmp_path, smol_tokenizer_dir):
    out, source = prepared_once
    common = ["--out", str(out), "--tokenizer", str(smol_tokenizer_dir), "--no-progress", "--workers", "1", "--force"]
    assert main(["prepare-data", "--input", str(source), "--shard-size", "64B", *common]) == 0
    assert len(list(out.glob("train_*.bin"))) > 3
    small = _good_jsonl(tmp_path / "small.jsonl", 2)
    assert main(["prepare-data", "--input", str(small), *common]) == 0
    manifest = read_manifest(out)
    names = {shard["file"] for entry in manifest["splits"].values() for shard in entry["shards"]}
    assert sorted(p.name for p in out.iterdir()) == sorted(names | {"manifest.json", "tokenizer"})


def test_a_json_null_line_is_not_taken_for_a_blank_one(tmp_path, capsys, smol_tokenizer_dir):
    (tmp_path / "n.jsonl").write_text('{"text": "fine"}\n\nnull\n')
    assert main(["prepare-data", "--input", str(tmp_path / "n.jsonl"), "--out", str(tmp_path / "out"),
                 "--tokenizer", str(smol_tokenizer_dir), "--no-progress", "--workers", "1"]) == 2
    assert "n.jsonl:3: expected a JSON object per line, got a NoneType" in capsys.readouterr().err
