"""``prepare_data(inputs=...)``: every input format against a direct ``tokenizers`` encoding,
sharding, workers, the hash split, deduplication, and the train split that is never empty."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from mossnet.data.batches import TokenBatches
from mossnet.data.prepare import prepare_data
from mossnet.data.shards import ShardedTokens
from mossnet.data.token_store import open_split, read_manifest

DOCS = [
    "The quick brown fox jumps over the lazy dog.\nA second line of the first document.",
    "Naïve café — 東京 🙂, with a literal <|endoftext|> inside that must stay text.",
    "def add(a, b):\n    return a + b",
    "When the night is long the stars are bright, and the river runs down to the sea.",
    "Numbers 0123456789 and punctuation: (a), [b], {c}!",
    "She said that the king would come at dawn.",
    "In the morning the birds sing in the trees, and the children play in the field.",
    "Good words cost nothing, but they are worth much.",
    "The old man laughed and went home.",
    "A small model learns to read and to write.",
    "Tabs\tand   spaces   stay as they are.",
    "Last document.",
]
ONE_LINE_DOCS = [doc.replace("\n", " ") for doc in DOCS]
FRACTIONS = {"val_fraction": 0.25, "test_fraction": 0.25}  # every split gets documents


def reference_split(text: str, val: float = 0.25, test: float = 0.25) -> str:
    """The documented rule, written out: the first 8 bytes of SHA-256(text) as u in [0, 1)."""
    u = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) / 2**64
    return "val" if u < val else "test" if u < val + test else "train"


def expected_documents(texts, tokenizer_dir, **fractions) -> dict[str, list[list[int]]]:
    """Per split, each document's ids from a direct tokenizers encoding, in input order."""
    reference = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    reference.encode_special_tokens = True  # "<|endoftext|>" in a document is text, not a break
    out: dict[str, list[list[int]]] = {}
    for text in texts:
        out.setdefault(reference_split(text, **fractions), []).append(
            reference.encode(text, add_special_tokens=False).ids)
    return out


def prepared_documents(out) -> dict[str, list[list[int]]]:
    """Per split, the documents of a prepared corpus (its stream cut after each separator)."""
    manifest = read_manifest(out)
    eos, docs = manifest["eos_id"], {}
    for split in manifest["splits"]:
        tokens = np.asarray(open_split(out, split)).tolist()
        assert tokens[-1] == eos
        current, docs[split] = [], []
        for token in tokens:
            if token == eos:
                docs[split].append(current)
                current = []
            else:
                current.append(token)
    return docs


def write_inputs(kind: str, folder):
    """Write DOCS in the form ``kind``; return (--input arguments, extra options, texts expected)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("txt", "md", "dir", "glob"):
        suffix = ".md" if kind == "md" else ".txt"
        for i, doc in enumerate(DOCS):
            sub = folder / ("nested" if i % 3 == 0 else "")
            sub.mkdir(exist_ok=True)
            (sub / f"doc_{i:02d}{suffix}").write_text(doc, encoding="utf-8")
        (folder / "ignored.pdf").write_bytes(b"%PDF")
        files = sorted(str(p) for p in folder.rglob(f"*{suffix}"))
        texts = [DOCS[int(p.rsplit("doc_", 1)[1][:2])] for p in files]
        if kind == "dir":
            return [str(folder)], {}, _sorted_walk_order(folder, suffix)
        if kind == "glob":
            return [str(folder / "**" / "*.txt")], {}, texts
        return files, {}, texts
    if kind == "blankline":
        (folder / "book.txt").write_text("\n\n\n".join(DOCS) + "\n", encoding="utf-8")
        return [str(folder / "book.txt")], {"doc_split": "blankline"}, DOCS
    if kind == "line":
        (folder / "lines.txt").write_text("\n\n".join(ONE_LINE_DOCS) + "\n", encoding="utf-8")
        return [str(folder / "lines.txt")], {"doc_split": "line"}, ONE_LINE_DOCS
    if kind.startswith("jsonl"):
        lines = "".join(json.dumps({"id": i, "body": doc}) + "\n" for i, doc in enumerate(DOCS)).encode()
        path = folder / f"data.{kind}"
        if kind.endswith(".gz"):
            lines = gzip.compress(lines)
        elif kind.endswith(".zst"):
            zstandard = pytest.importorskip("zstandard")

            lines = zstandard.ZstdCompressor().compress(lines)
        path.write_bytes(lines)
        return [str(path)], {"text_field": "body"}, DOCS
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(DOCS))), "content": DOCS}), folder / "data.parquet",
                       row_group_size=5)
        return [str(folder / "data.parquet")], {"text_field": "content"}, DOCS
    if kind == "dataset":
        datasets = pytest.importorskip("datasets")

        datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(folder / "saved"))
        return [str(folder / "saved")], {}, DOCS
    raise ValueError(kind)


def _sorted_walk_order(folder, suffix):
    # A folder is walked in sorted order, files of a folder before its subfolders.
    top = sorted(p for p in folder.glob(f"*{suffix}"))
    nested = sorted(p for p in (folder / "nested").glob(f"*{suffix}"))
    return [DOCS[int(p.name[4:6])] for p in top + nested]


KINDS = ["txt", "md", "dir", "glob", "blankline", "line", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "dataset"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_input_format_matches_a_direct_tokenizers_encoding(kind, tmp_path, smol_tokenizer_dir):
    inputs, options, texts = write_inputs(kind, tmp_path / "in")
    manifest = prepare_data(tmp_path / "out", tokenizer=str(smol_tokenizer_dir), inputs=inputs, progress=False,
                            **FRACTIONS, **options)
    expected = expected_documents(texts, smol_tokenizer_dir)
    assert prepared_documents(tmp_path / "out") == expected
    assert set(manifest["splits"]) == set(expected) == {"train", "val", "test"}
    for split, docs in expected.items():
        entry = manifest["splits"][split]
        assert entry["tokens"] == sum(len(ids) + 1 for ids in docs)
        assert entry["documents"] == len(docs)
    assert sum(e["bytes"] for e in manifest["splits"].values()) == sum(len(t.encode()) for t in texts)
    assert manifest["eos_id"] == 0 and manifest["eos_token"] == "<|endoftext|>"  # not the instruct <|im_end|>


def test_sharding_gives_the_same_token_stream_as_one_file(tmp_path, smol_tokenizer_dir):
    inputs, options, _ = write_inputs("jsonl", tmp_path / "in")
    common = dict(tokenizer=str(smol_tokenizer_dir), inputs=inputs, progress=False, val_fraction=0.0,
                  test_fraction=0.0, **options)
    prepare_data(tmp_path / "one", **common)
    manifest = prepare_data(tmp_path / "many", shard_bytes=64, **common)  # 32 uint16 tokens per shard
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 5 and all(s["tokens"] == 32 for s in shards[:-1])
    assert [s["file"] for s in shards[:2]] == ["train_00000.bin", "train_00001.bin"]
    one, many = open_split(tmp_path / "one", "train"), open_split(tmp_path / "many", "train")
    assert isinstance(many, ShardedTokens) and len(many) == len(one)
    assert np.array_equal(np.asarray(many), one)
    # The trainer's batches do not depend on the sharding (windows span shard boundaries).
    a = TokenBatches(one, batch_size=4, seq_len=40, seed=3)
    b = TokenBatches(many, batch_size=4, seq_len=40, seed=3)
    for _ in range(5):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert xa.equal(xb) and ya.equal(yb)


def test_output_is_byte_identical_for_any_number_of_workers(tmp_path, smol_tokenizer_dir):
    inputs, options, _ = write_inputs("dir", tmp_path / "in")
    manifests = {}
    for workers in (1, 2):
        manifests[workers] = prepare_data(tmp_path / f"w{workers}", tokenizer=str(smol_tokenizer_dir), inputs=inputs,
                                          progress=False, workers=workers, shard_bytes=100, **FRACTIONS)
    files = sorted(p.name for p in (tmp_path / "w1").glob("*.bin"))
    assert files == sorted(p.name for p in (tmp_path / "w2").glob("*.bin")) and len(files) > 3
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    drop = ("created", "seconds")
    assert {k: v for k, v in manifests[1].items() if k not in drop} == \
        {k: v for k, v in manifests[2].items() if k not in drop}


def test_split_is_stable_when_files_are_added(tmp_path, smol_tokenizer_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    texts = [f"Document {i}: " + " ".join(f"word{j}" for j in range(i % 5 + 3)) for i in range(40)]
    for i, text in enumerate(texts[:25]):
        (folder / f"{i:03d}.txt").write_text(text)
    prepare_data(tmp_path / "before", tokenizer=str(smol_tokenizer_dir), inputs=[str(folder)], progress=False,
                 **FRACTIONS)
    for i, text in enumerate(texts[25:], start=25):
        (folder / f"{i:03d}.txt").write_text(text)
    prepare_data(tmp_path / "after", tokenizer=str(smol_tokenizer_dir), inputs=[str(folder)], progress=False,
                 **FRACTIONS)
    reference = Tokenizer.from_file(str(smol_tokenizer_dir / "tokenizer.json"))
    split_of = {}
    for name in ("before", "after"):
        for split, docs in prepared_documents(tmp_path / name).items():
            for ids in docs:
                split_of.setdefault(name, {})[reference.decode(ids)] = split
    assert len(split_of["before"]) == 25 and len(split_of["after"]) == 40
    for text, split in split_of["before"].items():
        assert split_of["after"][text] == split  # no old document moved


def test_dedup_drops_exact_duplicates_and_reports_the_count(tmp_path, smol_tokenizer_dir):
    path = tmp_path / "dups.jsonl"
    texts = ["alpha beta", "gamma delta", "alpha beta", "epsilon", "gamma delta", "alpha beta"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    common = dict(tokenizer=str(smol_tokenizer_dir), inputs=[str(path)], progress=False, val_fraction=0.0,
                  test_fraction=0.0)
    kept = prepare_data(tmp_path / "dedup", dedup=True, **common)
    assert kept["dedup"] == {"enabled": True, "removed": 3}
    assert kept["splits"]["train"]["documents"] == 3
    every = prepare_data(tmp_path / "all", **common)
    assert every["splits"]["train"]["documents"] == 6 and every["dedup"]["removed"] == 0


def test_train_split_is_never_empty(tmp_path, smol_tokenizer_dir):
    # A single document that the hash rule sends to val: everything goes to train, with a warning.
    text = next(f"only document {i}" for i in range(100) if reference_split(f"only document {i}", 0.5, 0.4) == "val")
    (tmp_path / "one.txt").write_text(text)
    notes = []
    manifest = prepare_data(tmp_path / "out", tokenizer=str(smol_tokenizer_dir), inputs=[str(tmp_path / "one.txt")],
                            progress=False, val_fraction=0.5, test_fraction=0.4, log=notes.append)
    assert list(manifest["splits"]) == ["train"] and manifest["splits"]["train"]["documents"] == 1
    assert any("everything goes to train" in note for note in notes)
    expected = expected_documents([text], smol_tokenizer_dir, val=0, test=0)
    assert prepared_documents(tmp_path / "out") == expected and list(expected) == ["train"]


def test_no_validation_document_is_a_warning_not_an_error(tmp_path, smol_tokenizer_dir):
    (tmp_path / "a.txt").write_text("a single training document")
    notes = []
    manifest = prepare_data(tmp_path / "out", tokenizer=str(smol_tokenizer_dir), inputs=[str(tmp_path / "a.txt")],
                            progress=False, val_fraction=0.001, test_fraction=0.0, log=notes.append)
    assert list(manifest["splits"]) == ["train"]
    assert any("no document went to the val split" in note for note in notes)


def test_trained_bpe_on_user_inputs_learns_from_the_train_split_only(tmp_path):
    inputs, options, texts = write_inputs("jsonl", tmp_path / "in")
    manifest = prepare_data(tmp_path / "out", tokenizer="bpe", vocab_size=300, inputs=inputs, progress=False,
                            **FRACTIONS, **options)
    assert manifest["vocab_size"] == 300 and manifest["tokenizer"] == "bpe"
    docs = prepared_documents(tmp_path / "out")
    assert sum(len(d) for d in docs.values()) == len(texts)


def test_invalid_utf8_is_replaced_and_counted(tmp_path, smol_tokenizer_dir):
    (tmp_path / "bad.txt").write_bytes(b"good text \xff\xfe and more \xc3 end")
    manifest = prepare_data(tmp_path / "out", tokenizer=str(smol_tokenizer_dir), inputs=[str(tmp_path / "bad.txt")],
                            progress=False, val_fraction=0.0, test_fraction=0.0)
    assert manifest["invalid_utf8_replaced"] == 3  # \xff, \xfe, and the truncated \xc3
    text = "good text \ufffd\ufffd and more \ufffd end"
    assert prepared_documents(tmp_path / "out") == expected_documents([text], smol_tokenizer_dir, val=0, test=0)
