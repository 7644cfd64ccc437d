"""Token files and manifest: what prepare_data writes, and the errors for damaged data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from mossnet.data.corpora import load_corpus
from mossnet.data.errors import ChecksumError, ManifestError
from mossnet.data.token_store import open_split, read_manifest, token_dtype, verify_checksum
from mossnet.data.tokenizer import load_tokenizer, tokenizer_fingerprint

SMALL_VOCAB = 512  # as in conftest.prepared


def test_manifest_describes_the_files(prepared):
    out, written = prepared
    manifest = read_manifest(out)
    assert manifest == written
    assert manifest["format"] == "mossnet-tokens-v2"
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(out))
    assert (manifest["corpus"], manifest["tokenizer"]) == ("shakespeare", "bpe")
    assert manifest["vocab_size"] == SMALL_VOCAB and manifest["dtype"] == "uint16"
    assert manifest["max_documents"] == 1 and manifest["mossnet_version"] and manifest["created"]
    corpus = load_corpus("shakespeare", max_documents=1)
    for split, entry in manifest["splits"].items():
        tokens = open_split(out, split)
        assert tokens.dtype == np.uint16 and len(tokens) == entry["tokens"]
        assert int(tokens.max()) < SMALL_VOCAB
        # one eos after every document, and the file ends with one
        assert int((tokens == manifest["eos_id"]).sum()) == entry["documents"] == 1
        assert tokens[-1] == manifest["eos_id"]
        assert entry["bytes"] == sum(len(doc.text.encode()) for doc in corpus[split])
        assert entry["document_names"] == [doc.name for doc in corpus[split]]
        assert [shard["file"] for shard in entry["shards"]] == [f"{split}_00000.bin"]
        assert verify_checksum(out, split) == entry["shards"][0]["sha256"]


def test_token_files_decode_to_the_documents(prepared):
    out, manifest = prepared
    tokenizer = load_tokenizer(out)
    corpus = load_corpus("shakespeare", max_documents=1)
    val = open_split(out, "val")
    assert tokenizer.decode(val[:-1].tolist()) == corpus["val"][0].text


def test_tokenizer_loads_with_auto_tokenizer_and_round_trips(prepared):
    out, manifest = prepared
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert len(tokenizer) == manifest["vocab_size"]
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.bos_token_id == manifest["eos_id"]
    for text in ["To be, or not to be: that is the question.\n\n  Ham.\n", "naïve café — 東京 🙂\t"]:
        ids = tokenizer(text)["input_ids"]
        assert manifest["eos_id"] not in ids  # no special tokens added to plain text
        assert tokenizer.decode(ids) == text


def test_dtype_follows_vocabulary_size():
    assert token_dtype(4096) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32 and token_dtype(151_000) == np.uint32


@pytest.fixture
def copy_of(prepared, tmp_path):
    out, _ = prepared
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def test_corrupted_bin_is_detected(copy_of):
    path = copy_of / "train_00000.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    open_split(copy_of, "train")  # same size: the cheap check passes ...
    with pytest.raises(ChecksumError, match="train_00000.bin is corrupt: its SHA-256 is"):
        verify_checksum(copy_of, "train")  # ... the checksum does not
    with pytest.raises(ChecksumError):
        open_split(copy_of, "train", verify=True)
    verify_checksum(copy_of, "val")  # other splits are untouched


def test_truncated_bin_is_detected(copy_of):
    path = copy_of / "val_00000.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ManifestError, match="truncated or from another run"):
        open_split(copy_of, "val")


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="not a prepared corpus.*mossnet prepare-data"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "corrupt"),
        (json.dumps({"format": "nanogpt"}), "format is 'nanogpt'"),
        (json.dumps({"format": "mossnet-tokens-v1", "corpus": "x"}), "missing keys"),
    ],
)
def test_damaged_manifest_is_a_clear_error(copy_of, content, message):
    (copy_of / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(copy_of)


def test_unknown_split_is_a_clear_error(prepared):
    out, _ = prepared
    with pytest.raises(ManifestError, match="no split 'dev'"):
        open_split(out, "dev")


def test_public_api_is_importable_from_the_package():
    import mossnet.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None
    assert data.open_split is open_split
