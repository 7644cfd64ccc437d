"""Reading prepared data safely: sharded splits as one array, verify_corpus, first-read
verification, manifest fields of the wrong type, v1 corpora, ids out of range, short splits."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mossnet.data import DataError, verify_corpus
from mossnet.data.batches import TokenBatches
from mossnet.data.errors import ChecksumError, ManifestError, SplitTooShortError, TokenIdError
from mossnet.data.prepare import prepare_data
from mossnet.data.shards import ShardedTokens
from mossnet.data.token_store import (
    check_token_ids,
    open_split,
    read_manifest,
    write_tokens,
)
from mossnet.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_fingerprint


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, smol_tokenizer_dir):
    """A corpus whose train split has many 16-token shards (32 bytes each)."""
    folder = tmp_path_factory.mktemp("sharded")
    (folder / "in.jsonl").write_text("".join(json.dumps({"text": f"document {i}: " + "word " * (i % 9 + 1)}) + "\n"
                                             for i in range(60)))
    prepare_data(folder / "data", tokenizer=str(smol_tokenizer_dir), inputs=[str(folder / "in.jsonl")],
                 progress=False, shard_bytes=32, val_fraction=0.2, test_fraction=0.0)
    return folder / "data"


@pytest.fixture
def copy_of(sharded, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(sharded, target)
    return target


def reference(data_dir, split="train") -> np.ndarray:
    """The split read the obvious way: every shard file in manifest order, concatenated."""
    manifest = read_manifest(data_dir)
    return np.concatenate([np.fromfile(data_dir / s["file"], dtype=np.uint16)
                           for s in manifest["splits"][split]["shards"]])


def test_sharded_split_indexes_like_one_array(sharded):
    tokens, whole = open_split(sharded, "train"), reference(sharded)
    assert isinstance(tokens, ShardedTokens) and len(tokens.shards) > 10
    assert len(tokens) == len(whole) and tokens.shape == whole.shape and tokens.ndim == 1
    assert tokens.dtype == np.uint16
    for i in (0, 15, 16, 17, len(whole) - 1, -1, -17):
        assert tokens[i] == whole[i]
    for start, stop in ((0, 16), (10, 40), (15, 17), (5, 5), (0, len(whole)), (-30, -3), (100, 10**9)):
        assert np.array_equal(tokens[start:stop], whole[start:stop])
    assert np.array_equal(tokens[3:90:7], whole[3:90:7])
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(whole) - 33, size=(8, 1)) + np.arange(33)  # (8, 33) windows across shards
    assert np.array_equal(tokens[index], whole[index])  # windows: read as slices
    scattered = rng.integers(-len(whole), len(whole), size=(5, 7))  # any other index: a gather
    assert np.array_equal(tokens[scattered], whole[scattered])
    assert np.array_equal(np.asarray(tokens, dtype=np.int64), whole.astype(np.int64))
    with pytest.raises(IndexError):
        tokens[len(whole)]
    with pytest.raises(IndexError):
        tokens[np.array([0, len(whole)])]


def test_token_batches_over_shards_equal_batches_over_one_array(sharded):
    sharded_tokens, whole = open_split(sharded, "train"), reference(sharded)
    for rank in (0, 1):
        a = TokenBatches(sharded_tokens, batch_size=3, seq_len=24, seed=7, rank=rank, world_size=2, vocab_size=400)
        b = TokenBatches(whole, batch_size=3, seq_len=24, seed=7, rank=rank, world_size=2, vocab_size=400)
        for step in range(4):
            assert all(x.equal(y) for x, y in zip(a.batch(step), b.batch(step)))


def test_verify_corpus_hashes_everything_and_says_what_it_cost(sharded):
    summary = verify_corpus(sharded, progress=False)
    manifest = read_manifest(sharded)
    files = sum(len(e["shards"]) for e in manifest["splits"].values())
    assert summary["files"] == files and summary["open_verify"] is False
    assert summary["bytes"] == summary["hashed_bytes"] == sum(e["tokens"] for e in manifest["splits"].values()) * 2
    assert summary["message"].startswith(f"verified {sharded} (") and " s)" in summary["message"]
    assert summary["seconds"] >= 0 and len(summary["identity"]) == 64
    assert verify_corpus(sharded, ["val"], progress=False)["files"] == len(manifest["splits"]["val"]["shards"])
    with pytest.raises(ManifestError, match="has no split 'test'"):
        verify_corpus(sharded, ["train", "test"], progress=False)


def _flip_byte(path, offset=3):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01  # stays a valid id: only the checksum can tell
    path.write_bytes(bytes(data))


def test_verify_corpus_names_a_corrupted_shard(copy_of):
    _flip_byte(copy_of / "train_00004.bin")
    with pytest.raises(ChecksumError, match=r"train_00004\.bin is corrupt: its SHA-256 is"):
        verify_corpus(copy_of, progress=False)
    verify_corpus(copy_of, ["val"], progress=False)  # other splits are fine


def test_large_corpus_is_verified_shard_by_shard_on_first_read(copy_of):
    _flip_byte(copy_of / "train_00004.bin")
    summary = verify_corpus(copy_of, progress=False, max_bytes=0)  # "too large to hash at start"
    assert summary["open_verify"] == "first-read" and summary["hashed_bytes"] == 0
    assert "checked on its first read" in summary["message"]
    tokens = open_split(copy_of, "train", verify=summary["open_verify"])
    assert np.array_equal(tokens[0:16], reference(copy_of)[0:16])  # shard 0 is intact
    with pytest.raises(ChecksumError, match=r"train_00004\.bin is corrupt"):
        tokens[4 * 16 + 2]
    with pytest.raises(ChecksumError):
        open_split(copy_of, "train", verify=True)


def test_missing_or_truncated_shard_is_a_one_line_error(copy_of):
    (copy_of / "train_00002.bin").write_bytes(b"\x00\x00")
    with pytest.raises(ManifestError, match=r"train_00002\.bin: the manifest lists 16 uint16 tokens .* truncated"):
        verify_corpus(copy_of, progress=False)
    (copy_of / "train_00002.bin").unlink()
    with pytest.raises(ManifestError, match="it is missing"):
        open_split(copy_of, "train")


def _edit(manifest_path, edit):
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(vocab_size="400"), r"vocab_size is str '400', expected an integer"),
        (lambda m: m.update(vocab_size=True), r"vocab_size is bool True, expected an integer"),
        (lambda m: m.update(eos_id=0.5), r"eos_id is float 0\.5, expected an integer"),
        (lambda m: m.update(eos_id=400), r"eos_id 400 is outside the vocabulary"),
        (lambda m: m.update(dtype="int8"), r"dtype 'int8' is not one of"),
        (lambda m: m.update(tokenizer_fingerprint=5), r"'tokenizer_fingerprint' must be a string or null"),
        (lambda m: m.update(splits=[]), r"'splits' must be a non-empty object"),
        (lambda m: m["splits"]["train"].update(tokens="12"), r"splits\.train\.tokens is str '12'"),
        (lambda m: m["splits"]["train"].update(bytes=-1), r"splits\.train\.bytes is -1, expected at least 0"),
        (lambda m: m["splits"]["train"].update(tokens=5), r"splits\.train: its shards hold \d+ tokens but 'tokens' says 5"),
        (lambda m: m["splits"]["train"].update(shards="x"), r"splits\.train\.shards must be a list of objects"),
        (lambda m: m["splits"]["train"]["shards"][0].update(sha256="abc"), r"shards\[0\]\.sha256 'abc' is not a SHA-256"),
        (lambda m: m["splits"]["train"]["shards"][0].update(file="../x.bin"), r"shards\[0\]\.file '\.\./x\.bin' is not a plain"),
        (lambda m: m["splits"]["train"]["shards"][0].update(tokens=None), r"shards\[0\]\.tokens is NoneType None"),
        (lambda m: m["splits"]["train"].pop("documents"), r"splits\.train is missing keys \['documents'\]"),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_one_line_errors(copy_of, edit, message):
    _edit(copy_of / "manifest.json", edit)
    with pytest.raises(ManifestError, match=message) as info:
        verify_corpus(copy_of, progress=False)
    assert "\n" not in str(info.value) and str(copy_of / "manifest.json") in str(info.value)


def test_v1_corpus_is_still_read_and_its_fingerprint_computed(tmp_path, gpt2):
    folder = tmp_path / "v1"
    folder.mkdir()
    save_tokenizer(gpt2, folder)
    texts = ["Hello world", "A second document."]
    ids = [np.array(gpt2(t)["input_ids"] + [50256]) for t in texts]
    count, sha = write_tokens(folder / "train.bin", ids, np.uint16)
    (folder / "manifest.json").write_text(json.dumps({
        "format": "mossnet-tokens-v1", "corpus": "old", "tokenizer": "gpt2", "vocab_size": 50257, "eos_id": 50256,
        "dtype": "uint16", "splits": {"train": {"file": "train.bin", "tokens": count, "bytes": 29, "documents": 2,
                                                "sha256": sha}}}))
    manifest = read_manifest(folder)
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(load_tokenizer(folder)) == tokenizer_fingerprint(gpt2)
    assert manifest["splits"]["train"]["shards"] == [{"file": "train.bin", "tokens": count, "sha256": sha}]
    assert verify_corpus(folder, progress=False)["files"] == 1
    assert open_split(folder, "train").tolist() == np.concatenate(ids).tolist()


def test_an_id_out_of_range_is_a_data_error(sharded):
    tokens = open_split(sharded, "train")
    bad = int(reference(sharded).max())
    with pytest.raises(TokenIdError, match=rf"token id {bad} at position \d+ is outside the vocabulary \(vocab_size={bad}"):
        check_token_ids(tokens, bad)
    with pytest.raises(DataError):
        TokenBatches(tokens, batch_size=2, seq_len=8, vocab_size=bad)
    with pytest.raises(ValueError):  # still a ValueError for callers that catch that
        check_token_ids(np.array([1, 2, -1]), 10)


def test_a_split_shorter_than_one_sequence_is_a_data_error(sharded):
    val = open_split(sharded, "val")
    with pytest.raises(SplitTooShortError, match=rf"the split has {len(val)} tokens, too few for one window"):
        TokenBatches(val, batch_size=2, seq_len=len(val))
    assert isinstance(SplitTooShortError("x"), DataError)
