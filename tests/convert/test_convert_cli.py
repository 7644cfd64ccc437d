"""``mossnet convert`` end to end on a tiny teacher: the run directory it writes, what it refuses
(one line, a non-zero exit, nothing under --out), ownership of --out, and atomicity."""

from __future__ import annotations

import json

import pytest
import torch

from mossnet.cli.main import main


def convert_argv(teacher_dir, out, calibration_file, *extra):
    return ["convert", str(teacher_dir), "--out", str(out), "--calibration-text", str(calibration_file),
            "--calibration-sequences", "2", "--seq-len", "24", "--device", "cpu", *extra]


def run(capsys, argv) -> int:
    """``mossnet ARGV`` in-process, with what the fixtures printed cleared first."""
    capsys.readouterr()
    return main(argv)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_writes_a_complete_run_directory(make_teacher, calibration_file, tmp_path, capsys):
    from mossnet.rundir.integrity import verify_model_dir
    from mossnet.rundir.load import load_model

    _, teacher_dir = make_teacher()
    out = tmp_path / "run"
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file)) == 0
    assert capsys.readouterr().out.strip() == str(out / "model")
    assert sorted(p.name for p in out.iterdir()) == ["logs", "model", "mossnet-run.json"]
    assert json.loads((out / "mossnet-run.json").read_text())["command"] == "convert"
    model_dir = out / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "SHA256SUMS", "tokenizer.json",
            "modeling_mossnet.py", "configuration_mossnet.py"} <= names
    assert verify_model_dir(model_dir) is True
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] and config["ssm_z_bias"] is True and config["state_update"] == "all"
    card = (model_dir / "README.md").read_text()
    assert "## Conversion" in card and str(teacher_dir) in card
    record = json.loads((out / "logs" / "conversion.json").read_text())
    assert len(record["layers"]) == 2 and record["experts_per_token"] == 4
    assert all(0 <= layer["heldout_relative_error"] < 10 for layer in record["layers"])
    model = load_model(out)  # the commands' loader: checksums, finite weights, no missing keys
    assert type(model).__name__ == "MossNetForCausalLM"


def test_routed_conversion(make_teacher, calibration_file, tmp_path, capsys):
    _, teacher_dir = make_teacher()
    out = tmp_path / "routed"
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file, "--experts-per-token", "2",
                             "--state-update", "routed")) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["ssm_top_k"], config["state_update"]) == (2, "routed")


REFUSALS = [
    ("attention_bias", dict(attention_bias=True), "attention_bias"),
    ("mlp_bias", dict(mlp_bias=True), "mlp_bias"),
    ("hidden_act", dict(hidden_act="gelu"), "hidden_act"),
    ("sliding_window", dict(sliding_window=16), "sliding"),
    ("pretraining_tp", dict(pretraining_tp=2), "pretraining_tp"),
]


@pytest.mark.parametrize("name,overrides,needle", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_teacher_fields(make_teacher, calibration_file, tmp_path, capsys, name, overrides, needle):
    _, teacher_dir = make_teacher(name)
    config_path = teacher_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.update(overrides)  # a saved config, as a user would have it
    config_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file)) != 0
    line = one_line_error(capsys)
    assert needle in line and line.startswith("mossnet convert: cannot convert")
    assert not out.exists()


def test_refused_architecture(calibration_file, tmp_path, capsys):
    from transformers import MistralConfig, MistralForCausalLM

    directory = tmp_path / "mistral"
    MistralForCausalLM(MistralConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, sliding_window=None)
                       ).save_pretrained(directory)
    out = tmp_path / "out"
    assert run(capsys, convert_argv(directory, out, calibration_file)) != 0
    assert "not a Llama model" in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("argv_extra,needle", [(["--experts-per-token", "5"], "--experts-per-token"),
                                               (["--calibration-text", "no-such-corpus"], "calibration-text")])
def test_refused_options(make_teacher, calibration_file, tmp_path, capsys, argv_extra, needle):
    _, teacher_dir = make_teacher()
    out = tmp_path / "out"
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file, *argv_extra)) != 0
    assert needle in one_line_error(capsys)
    assert not out.exists()


def test_refused_teacher_paths(tmp_path, calibration_file, capsys):
    missing = tmp_path / "nothing"
    assert run(capsys, convert_argv(missing, tmp_path / "out", calibration_file)) != 0
    assert "does not exist" in one_line_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(capsys, convert_argv(empty, tmp_path / "out", calibration_file)) != 0
    assert "no config.json" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_gguf_teacher_without_the_gguf_package(tmp_path, calibration_file, capsys, monkeypatch):
    import importlib.util

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    assert run(capsys, convert_argv(fake, tmp_path / "out", calibration_file)) != 0
    line = one_line_error(capsys)
    assert "gguf" in line and "pip install 'mossnet[eval]'" in line
    assert not (tmp_path / "out").exists()


def test_teacher_without_tokenizer(make_teacher, calibration_file, tmp_path, capsys):
    teacher, _ = make_teacher(save=False)
    teacher.save_pretrained(tmp_path / "bare")
    assert run(capsys, convert_argv(tmp_path / "bare", tmp_path / "out", calibration_file)) != 0
    assert "tokenizer" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_output_directory_ownership(make_teacher, calibration_file, tmp_path, capsys):
    _, teacher_dir = make_teacher()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run(capsys, convert_argv(teacher_dir, foreign, calibration_file)) != 0
    assert "not empty" in one_line_error(capsys)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # inside the teacher's directory: refused
    assert run(capsys, convert_argv(teacher_dir, teacher_dir / "out", calibration_file)) != 0
    assert "teacher" in one_line_error(capsys)

    out = tmp_path / "run"
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file)) == 0
    capsys.readouterr()
    first = (out / "model" / "model.safetensors").read_bytes()
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file)) != 0
    assert "already holds a conversion" in one_line_error(capsys)
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file, "--force", "--seed", "3")) == 0
    assert (out / "model" / "model.safetensors").read_bytes() != first  # other calibration windows
    assert sorted(p.name for p in out.iterdir()) == ["logs", "model", "mossnet-run.json"]


def test_a_failed_save_leaves_no_model(make_teacher, calibration_file, tmp_path, capsys, monkeypatch):
    import mossnet.rundir.integrity as integrity

    _, teacher_dir = make_teacher()

    def broken(model_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(integrity, "write_checksums", broken)
    out = tmp_path / "run"
    assert run(capsys, convert_argv(teacher_dir, out, calibration_file)) == 1
    err = capsys.readouterr().err  # progress lines, then the one error line
    assert "Traceback" not in err and "No space left" in err.strip().splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["mossnet-run.json"]  # no model/, no temporary folder


def test_conversion_is_deterministic(make_teacher, calibration_file, tmp_path, capsys):
    from safetensors.torch import load_file

    _, teacher_dir = make_teacher()
    for name in ("a", "b"):
        assert run(capsys, convert_argv(teacher_dir, tmp_path / name, calibration_file)) == 0
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_flag_has_help():
    from mossnet.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["convert"]
    bare = [a.option_strings or [a.dest] for a in sub._actions if not a.help and a.dest != "help"]
    assert not bare, f"mossnet convert: no help text for {bare}"


@pytest.mark.parametrize("argv_extra", [["--experts-per-token", "0"], ["--state-update", "some"],
                                        ["--seq-len", "-3"], ["--device", "tpu"]])
def test_argparse_refuses_bad_values(tmp_path, capsys, argv_extra):
    with pytest.raises(SystemExit) as stop:
        main(["convert", str(tmp_path), "--out", str(tmp_path / "out"), *argv_extra])
    assert stop.value.code == 2
    assert argv_extra[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
