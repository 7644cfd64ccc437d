"""Every bad input to ``generate``, ``eval``, ``export``, ``bench``, ``compare`` and ``info``: one
line naming the problem, a non-zero exit, no traceback, and no output that looks complete.

The table runs in-process through ``mossnet.cli.main.main`` (an argparse refusal is its
``SystemExit(2)``). Checkpoints are tiny MossNet models written by ``save_pretrained`` with a
``SHA256SUMS`` record, then damaged the ways a disk, a copy or a person damages them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mossnet.cli.main import main

VOCAB = 64
MODEL = dict(vocab_size=VOCAB, d_model=16, n_layers=2, ssm_experts=4, ssm_top_k=2, ssm_head_dim=8, ssm_state_dim=4,
             conv_kernel=4, mlp_experts=4, mlp_top_k=2, mlp_hidden_dim=32, chunk_size=8, eos_token_id=0,
             bos_token_id=0)
# Rows that reach the task lookup need lm-eval installed (CI has it; a bare GPU image may not, and
# then the command rightly stops earlier, at the missing extra).
NEEDS_LM_EVAL = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="needs lm-eval installed")
REACHES_TASK_LOOKUP = {"eval: --tasks bogus", "eval: --tasks ,",
                       "eval: --tasks with a tokenizer from another vocabulary"}
WORDS = "the a king queen river sea night star bird tree child field gate dawn people said would come".split()


# ----------------------------------------------------------------------------- fixtures


def word_tokenizer(n_tokens: int):
    """A word-level tokenizer of exactly ``n_tokens`` tokens (``<eos>`` = 0, ``<unk>`` = 1)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = WORDS + [f"w{i}" for i in range(n_tokens)]
    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words[: n_tokens - 2])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", bos_token="<eos>", unk_token="<unk>")


def save_checkpoint(path: Path, *, tokenizer=True, checksums=True, nan=False, layout="flat") -> Path:
    """A tiny MossNet checkpoint; ``layout="run"`` puts it in ``path/model`` with a run marker."""
    from mossnet import MossNetConfig, MossNetForCausalLM
    from mossnet.rundir.integrity import write_checksums
    from mossnet.rundir.layout import write_marker

    torch.manual_seed(0)
    model = MossNetForCausalLM(MossNetConfig(**MODEL)).eval()
    if nan:
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "embed" in n)[3, 1] = float("nan")
    model_dir = path / "model" if layout == "run" else path
    model.save_pretrained(model_dir)
    if tokenizer:
        word_tokenizer(40).save_pretrained(model_dir)
    if checksums:
        write_checksums(model_dir)
    if layout == "run":
        write_marker(path, "train")
    return path


def edit_config(model_dir: Path, **changes) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


def write_corpus(path: Path, ids: np.ndarray, vocab_size: int, **manifest_extra) -> Path:
    """A prepared corpus holding ``ids`` as its val split (recorded SHA-256 is the file's own)."""
    from mossnet.data.token_store import FORMAT, write_manifest, write_tokens

    path.mkdir(parents=True)
    count, sha = write_tokens(path / "val.bin", [ids], np.uint16)
    write_manifest(path, {"format": FORMAT, "corpus": "test", "tokenizer": "word", "vocab_size": vocab_size,
                          "eos_id": 0, "dtype": "uint16", **manifest_extra,
                          "splits": {"val": {"file": "val.bin", "tokens": count, "bytes": count * 4,
                                             "documents": 1, "sha256": sha}}})
    return path


@pytest.fixture(scope="session")
def cases(tmp_path_factory) -> dict[str, Path]:
    """Every checkpoint and corpus the table refers to, by name."""
    root = tmp_path_factory.mktemp("bad-input")
    good = save_checkpoint(root / "good")
    paths = {"good": good, "run": save_checkpoint(root / "run", layout="run")}

    def variant(name: str, checksums: bool = False) -> Path:
        path = root / name
        shutil.copytree(good, path)
        if not checksums:
            (path / "SHA256SUMS").unlink()
        paths[name] = path
        return path

    weights = variant("flipped", checksums=True) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-200:-190] = bytes(b ^ 0xFF for b in data[-200:-190])  # same size, inside a tensor
    weights.write_bytes(bytes(data))

    weights = variant("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    weights = variant("bad_header") / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])

    (variant("no_config") / "config.json").unlink()
    edit_config(variant("impossible"), n_layers=-1)
    edit_config(variant("bogus_scan"), scan_impl="bogus")
    edit_config(variant("vocab_mismatch"), vocab_size=VOCAB + 32)
    word_tokenizer(VOCAB + 40).save_pretrained(variant("big_tokenizer"))
    paths["nan"] = save_checkpoint(root / "nan", nan=True)
    paths["no_tokenizer"] = save_checkpoint(root / "no_tokenizer", tokenizer=False)

    rng = np.random.default_rng(0)
    paths["data"] = write_corpus(root / "data", rng.integers(0, 40, 300), 40)
    paths["data_big_vocab"] = write_corpus(root / "data_big_vocab", rng.integers(0, 40, 300), VOCAB + 100)
    paths["data_out_of_range"] = write_corpus(root / "data_out_of_range", rng.integers(0, VOCAB + 50, 300), VOCAB)
    corrupt = write_corpus(root / "data_corrupt", rng.integers(0, 40, 300), 40)
    raw = bytearray((corrupt / "val.bin").read_bytes())
    raw[10] ^= 0x01  # still in range: only the checksum can tell
    (corrupt / "val.bin").write_bytes(bytes(raw))
    paths["data_corrupt"] = corrupt
    paths["data_short"] = write_corpus(root / "data_short", np.array([3]), 40)

    paths["file"] = root / "a_file"
    paths["file"].write_text("not a directory\n")
    paths["foreign"] = root / "foreign"
    paths["foreign"].mkdir()
    (paths["foreign"] / "notes.txt").write_text("the user's\n")
    return paths


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``mossnet ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refusing a value
        code = exit_.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err


def fill(argv: list[str], paths: dict[str, Path], tmp: Path) -> list[str]:
    """Replace ``{name}`` with the path of that case, and ``{tmp}`` with a fresh folder."""
    names = {**{k: str(v) for k, v in paths.items()}, "tmp": str(tmp)}
    return [a.format(**names) for a in argv]


# ----------------------------------------------------------------------------- the table

# (id, argv, what stderr must say). ``{x}`` is the case x of the ``cases`` fixture; ``{tmp}`` a new folder.
G = ["generate", "--max-new-tokens", "2", "--device", "cpu"]
E = ["eval", "--perplexity", "--data", "{data}", "--device", "cpu", "--no-progress", "--seq-len", "16",
     "--output", "{tmp}/r.json"]
X = ["export", "--format", "torch", "--prefill-length", "8", "--out", "{tmp}/export"]

CHECKPOINT_CASES = [  # (what, the checkpoint argument, what stderr must say)
    ("flipped bytes, SHA256SUMS present", "{flipped}", r"does not match the SHA-256"),
    ("truncated safetensors", "{truncated}", r"cannot load the model"),
    ("corrupted safetensors header", "{bad_header}", r"cannot load the model"),
    ("missing config.json", "{no_config}", r"no config\.json"),
    ("does not exist", "{tmp}/nonexistent", r"nonexistent does not exist$"),
    ("a file, not a directory", "{file}", r"not a directory"),
    ("vocab / shape mismatch", "{vocab_mismatch}", r"do not match the config's shapes|do not match its config"),
    ("non-finite weights", "{nan}", r"non-finite"),
    ("impossible config values", "{impossible}", r"n_layers"),
]
SCAN_IMPL_CASE = ("scan_impl: bogus", "{bogus_scan}", r"scan_impl")


TABLE = [
    # ---- generate: checkpoints
    *[(f"generate: {what}", [*G, arg], expect) for what, arg, expect in CHECKPOINT_CASES],
    ("generate: tokenizer from another vocabulary", [*G, "{big_tokenizer}"], r"tokenizer has \d+ tokens"),
    ("generate: missing tokenizer", [*G, "{no_tokenizer}"], r"no tokenizer"),
    ("generate: --tokenizer from another vocabulary", [*G, "{good}", "--tokenizer", "{big_tokenizer}"],
     r"tokenizer has \d+ tokens"),
    # ---- generate: flags
    ("generate: --top-p 0", [*G, "{good}", "--top-p", "0"], r"--top-p: must be in \(0, 1\]"),
    ("generate: --top-p 1.5", [*G, "{good}", "--top-p", "1.5"], r"--top-p"),
    ("generate: --top-p nan", [*G, "{good}", "--top-p", "nan"], r"--top-p: expected a finite number"),
    ("generate: --top-k -1", [*G, "{good}", "--top-k", "-1"], r"--top-k: must be >= 0"),
    ("generate: --top-k 2.5", [*G, "{good}", "--top-k", "2.5"], r"--top-k: expected an integer"),
    ("generate: --repetition-penalty 0", [*G, "{good}", "--repetition-penalty", "0"], r"--repetition-penalty"),
    ("generate: --repetition-penalty -1", [*G, "{good}", "--repetition-penalty", "-1"], r"--repetition-penalty"),
    ("generate: --temperature -1", [*G, "{good}", "--temperature", "-1"], r"--temperature: must be >= 0"),
    ("generate: --temperature inf", [*G, "{good}", "--temperature", "inf"], r"--temperature"),
    ("generate: --max-new-tokens 0", [*G, "{good}", "--max-new-tokens", "0"], r"--max-new-tokens: must be >= 1"),
    ("generate: --seed -1", [*G, "{good}", "--seed", "-1"], r"--seed"),
    ("generate: --device cuda:x", [*G, "{good}", "--device", "cuda:x"], r"--device: expected auto, cpu, cuda"),
    ("generate: --device gpu", [*G, "{good}", "--device", "gpu"], r"--device"),
    ("generate: --device cuda:99", [*G, "{good}", "--device", "cuda:99"], r"--device cuda:99: "),
    ("generate: --dtype int8", [*G, "{good}", "--dtype", "int8"], r"--dtype"),
    # ---- eval: checkpoints (perplexity needs no tokenizer: the data are ids)
    *[(f"eval: {what}", [E[0], arg, *E[1:]], expect) for what, arg, expect in CHECKPOINT_CASES],
    ("eval: --tasks with a tokenizer from another vocabulary",
     ["eval", "{big_tokenizer}", "--tasks", "piqa", "--limit", "1", "--device", "cpu", "--output", "{tmp}/r.json"],
     r"tokenizer has \d+ tokens"),
    # ---- eval: data
    ("eval: corpus of a larger vocabulary", ["eval", "{good}", *E[1:3], "{data_big_vocab}", *E[4:]],
     r"token ids but the model's vocabulary has"),
    ("eval: token id out of range", ["eval", "{good}", *E[1:3], "{data_out_of_range}", *E[4:]],
     r"token id \d+ at position \d+ is outside the vocabulary"),
    ("eval: corpus with flipped bytes", ["eval", "{good}", *E[1:3], "{data_corrupt}", *E[4:]], r"is corrupt: its SHA-256"),
    ("eval: split of one token", ["eval", "{good}", *E[1:3], "{data_short}", *E[4:]], r"at least 2"),
    ("eval: --data not a corpus", ["eval", "{good}", *E[1:3], "{foreign}", *E[4:]], r"manifest\.json not found"),
    ("eval: --data missing", ["eval", "{good}", *E[1:3], "{tmp}/nodata", *E[4:]], r"--data .* does not exist"),
    ("eval: --split missing", ["eval", "{good}", *E[1:], "--split", "train"], r"has no split 'train'"),
    # ---- eval: flags and output
    ("eval: nothing to do", ["eval", "{good}"], r"nothing to do"),
    ("eval: --perplexity without --data", ["eval", "{good}", "--perplexity"], r"--perplexity needs --data"),
    ("eval: --max-tokens -5", ["eval", "{good}", *E[1:], "--max-tokens", "-5"], r"--max-tokens: must be >= 1"),
    ("eval: --max-tokens 1", ["eval", "{good}", *E[1:], "--max-tokens", "1"], r"--max-tokens must be >= 2"),
    ("eval: --batch-size 0", ["eval", "{good}", *E[1:], "--batch-size", "0"], r"--batch-size: must be >= 1"),
    ("eval: --seq-len 0", ["eval", "{good}", *E[1:], "--seq-len", "0"], r"--seq-len: must be >= 1"),
    ("eval: --seq-len abc", ["eval", "{good}", *E[1:], "--seq-len", "abc"], r"--seq-len: expected an integer"),
    ("eval: --stride 0", ["eval", "{good}", *E[1:], "--stride", "0"], r"--stride: must be >= 1"),
    ("eval: --stride > --seq-len", ["eval", "{good}", *E[1:], "--stride", "32"], r"--stride 32 is longer than --seq-len"),
    ("eval: --limit 0", ["eval", "{good}", "--tasks", "piqa", "--limit", "0"], r"--limit: must be > 0"),
    ("eval: --limit -3", ["eval", "{good}", "--tasks", "piqa", "--limit", "-3"], r"--limit"),
    ("eval: --num-fewshot -1", ["eval", "{good}", "--tasks", "piqa", "--num-fewshot", "-1"], r"--num-fewshot"),
    ("eval: --threads 0", ["eval", "{good}", *E[1:], "--threads", "0"], r"--threads"),
    ("eval: --device cuda:99", ["eval", "{good}", *E[1:], "--device", "cuda:99"], r"--device cuda:99: "),
    ("eval: --dtype int4", ["eval", "{good}", *E[1:], "--dtype", "int4"], r"--dtype"),
    ("eval: --output is a directory", ["eval", "{good}", *E[1:-1], "{tmp}"], r"--output .* is a directory"),
    ("eval: --output under a file", ["eval", "{good}", *E[1:-1], "{file}/r.json"], r"is a file, not a directory"),
    ("eval: --output is someone's file", ["eval", "{good}", *E[1:-1], "{file}"], r"is not a `mossnet eval` result"),
    ("eval: --tasks bogus", ["eval", "{good}", "--tasks", "bogus", "--output", "{tmp}/r.json"],
     r"unknown task bogus; offline tasks: .*piqa"),
    ("eval: --tasks ,", ["eval", "{good}", "--tasks", ",", "--output", "{tmp}/r.json"], r"names no task"),
    # ---- export
    *[(f"export: {what}", [X[0], arg, *X[1:]], expect) for what, arg, expect in CHECKPOINT_CASES],
    ("export: tokenizer from another vocabulary", [X[0], "{big_tokenizer}", *X[1:]], r"tokenizer has \d+ tokens"),
    ("export: not a MossNet preset", ["export", "--preset", "huge", "--format", "torch", "--out", "{tmp}/e"],
     r"--preset 'huge' is not a preset"),
    ("export: --prefill-length 0", [X[0], "{good}", *X[1:], "--prefill-length", "0"], r"--prefill-length: must be >= 1"),
    ("export: --batch-size 0", [X[0], "{good}", *X[1:], "--batch-size", "0"], r"--batch-size: must be >= 1"),
    ("export: --opset 7", [X[0], "{good}", *X[1:], "--opset", "7"], r"--opset: must be >= 18"),
    ("export: --opset 999", [X[0], "{good}", "--out", "{tmp}/export", "--opset", "999"], r"--opset 999: .*supports"),
    ("export: --opset x", [X[0], "{good}", *X[1:], "--opset", "x"], r"--opset: expected an integer"),
    ("export: --out is the checkpoint", [X[0], "{good}", *X[1:-1], "{good}"], r"--out .* is the checkpoint directory"),
    ("export: --out inside the checkpoint", [X[0], "{good}", *X[1:-1], "{good}/export"],
     r"--out .* is inside the checkpoint directory"),
    ("export: --out inside a run directory", [X[0], "{run}", *X[1:-1], "{run}/model/export"],
     r"--out .* is inside the (checkpoint|model) directory"),
    ("export: --out contains the checkpoint", [X[0], "{run}/model", *X[1:-1], "{run}"],
     r"--out .* contains the (checkpoint|model) directory"),
    ("export: --out holds someone's files", [X[0], "{good}", *X[1:-1], "{foreign}"], r"is not empty .* pass --force"),
    ("export: --out is a file", [X[0], "{good}", *X[1:-1], "{file}"], r"--out .* is a file"),
    # ---- bench
    ("bench: --contexts abc", ["bench", "--contexts", "abc"], r"--contexts: expected an integer"),
    ("bench: --contexts 0", ["bench", "--contexts", "128,0"], r"--contexts: must be >= 1"),
    ("bench: --extra-contexts x", ["bench", "--extra-contexts", "x"], r"--extra-contexts"),
    ("bench: --models bogus", ["bench", "--models", "mossnet,bogus"], r"--models: unknown model 'bogus'; choose from mossnet"),
    ("bench: --threads 0", ["bench", "--threads", "0"], r"--threads: must be >= 1"),
    ("bench: --decode-tokens -1", ["bench", "--decode-tokens", "-1"], r"--decode-tokens"),
    ("bench: --device tpu", ["bench", "--device", "tpu"], r"--device: expected auto, cpu, cuda"),
    ("bench: --onnx-dir missing", ["bench", "--onnx-dir", "{tmp}/none"], r"--onnx-dir .* does not exist"),
    ("bench: --onnx-dir not an export", ["bench", "--onnx-dir", "{foreign}"], r"no readable manifest\.json"),
    ("bench: --json is a directory", ["bench", "--tiny", "--json", "{tmp}"], r"--json .* is a directory"),
    # ---- compare
    ("compare: --archs bogus", ["compare", "--study", "mqar", "--out", "{tmp}/c", "--archs", "mossnet,bogus"],
     r"--archs: unknown architecture 'bogus'"),
    ("compare: --archs bogus (ablations)", ["compare", "--study", "ablations", "--data", "{data}", "--out", "{tmp}/c",
                                            "--archs", "bogus"], r"unknown ablation 'bogus'"),
    ("compare: --seeds 0", ["compare", "--study", "mqar", "--out", "{tmp}/c", "--seeds", "0"], r"--seeds"),
    ("compare: --widths x", ["compare", "--study", "mqar", "--out", "{tmp}/c", "--widths", "16,x"], r"--widths"),
    ("compare: --lrs -1", ["compare", "--study", "mqar", "--out", "{tmp}/c", "--lrs", "-1"], r"--lrs"),
    ("compare: --budget-tokens abc", ["compare", "--study", "lm", "--data", "{data}", "--out", "{tmp}/c",
                                      "--budget-tokens", "abc"], r"--budget-tokens"),
    ("compare: --warmup-frac 1.5", ["compare", "--study", "lm", "--data", "{data}", "--out", "{tmp}/c",
                                    "--warmup-frac", "1.5"], r"--warmup-frac"),
    ("compare: lm without --data", ["compare", "--study", "lm", "--out", "{tmp}/c"], r"needs --data"),
    ("compare: --data not a corpus", ["compare", "--study", "lm", "--data", "{foreign}", "--out", "{tmp}/c"],
     r"manifest\.json not found"),
    ("compare: --out holds someone's files", ["compare", "--study", "mqar", "--out", "{foreign}"],
     r"is not empty .* pass --force"),
    ("compare: --out is --data", ["compare", "--study", "lm", "--data", "{data}", "--out", "{data}"],
     r"--out .* is the data directory"),
    ("compare: --device cuda:x", ["compare", "--study", "mqar", "--out", "{tmp}/c", "--device", "cuda:x"], r"--device"),
    # ---- info
    ("compare: --device cuda:99", ["compare", "--study", "mqar", "--out", "{tmp}/c", "--device", "cuda:99"],
     r"--device cuda:99: "),
    ("info: --device cuda:99", ["info", "--device", "cuda:99"], r"--device cuda:99: "),
    ("info: --device tpu", ["info", "--device", "tpu"], r"--device: expected auto, cpu, cuda"),
]


def _scan_impl_rows():
    """``scan_impl: bogus`` in a checkpoint's config.json is refused when it loads."""
    what, arg, expect = SCAN_IMPL_CASE
    return [pytest.param(f"{cmd}: {what}", argv, expect, id=f"{cmd}: {what}")
            for cmd, argv in (("generate", [*G, arg]), ("eval", [E[0], arg, *E[1:]]), ("export", [X[0], arg, *X[1:]]))]


def _no_complete_output(tmp: Path) -> None:
    """What a failed command leaves must not look like a finished result."""
    leftovers = [p for p in tmp.rglob("*") if p.is_file()]
    assert not leftovers, f"a failed command left {leftovers}"


@pytest.mark.parametrize("what, argv, expect",
                         [pytest.param(*row, id=row[0], marks=[NEEDS_LM_EVAL] if row[0] in REACHES_TASK_LOOKUP else [])
                          for row in TABLE] + _scan_impl_rows())
def test_bad_input_is_one_line_and_nonzero(what, argv, expect, cases, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOSSNET_DEBUG", raising=False)
    tmp = tmp_path / "t"
    tmp.mkdir()
    code, out, err = run_cli(fill(argv, cases, tmp), capsys)
    assert code != 0, f"{what}: exit 0\n{out}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out
    assert "unexpected error" not in err, err
    assert re.search(expect, err), f"{what}: expected /{expect}/ in stderr, got:\n{err}"
    _no_complete_output(tmp)


# ----------------------------------------------------------------------------- missing extras


def _hide_modules(monkeypatch, *names: str) -> None:
    """Make ``importlib.util.find_spec`` report ``names`` as not installed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name in names else real(name, *a, **k))


@pytest.mark.parametrize("argv, hidden, want", [
    (["export", "{good}", "--out", "{tmp}/e"], ("onnxscript",),
     r"mossnet export --format onnx needs onnxscript, which is not installed: pip install 'mossnet\[export\]'"),
    (["eval", "{good}", "--tasks", "piqa", "--output", "{tmp}/r.json"], ("lm_eval",),
     r"mossnet eval --tasks needs lm-eval, which is not installed: pip install 'mossnet\[eval\]'"),
    pytest.param(["eval", "{good}", "--tasks", "piqa", "--backend", "hf", "--output", "{tmp}/r.json"], ("accelerate",),
                 r"needs accelerate, which is not installed: pip install 'mossnet\[eval\]'", marks=NEEDS_LM_EVAL),
    (["bench", "--onnx-dir", "{tmp}"], ("onnxruntime",), r"needs onnxruntime, which is not installed"),
    (["bench", "--tiny", "--plot", "{tmp}/p.png"], ("matplotlib",), r"pip install 'mossnet\[plot\]'"),
])
def test_missing_extra_is_one_line_naming_the_install(argv, hidden, want, cases, tmp_path, capsys, monkeypatch):
    _hide_modules(monkeypatch, *hidden)
    code, _, err = run_cli(fill(argv, cases, tmp_path), capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(want, err), err
    assert len(err.strip().splitlines()) == 1
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------------- what must still work


def test_perplexity_needs_no_tokenizer(cases, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, text, err = run_cli(["eval", str(cases["no_tokenizer"]), "--perplexity", "--data", str(cases["data"]),
                               "--seq-len", "16", "--device", "cpu", "--no-progress", "--output", str(out)], capsys)
    assert code == 0, err
    assert "verified" in text and "SHA-256" in text  # the corpus check, with its cost
    result = json.loads(out.read_text())["perplexity"]
    assert result["tokens"] == 299 and np.isfinite(result["loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left


def test_no_verify_skips_the_checksum(cases, tmp_path, capsys):
    argv = ["eval", str(cases["flipped"]), "--perplexity", "--data", str(cases["data_corrupt"]), "--seq-len", "16",
            "--device", "cpu", "--no-progress", "--output", str(tmp_path / "r.json")]
    assert run_cli(argv, capsys)[0] == 2
    code, text, err = run_cli(argv + ["--no-verify"], capsys)
    assert code == 0, err
    assert "verified" not in text


def test_run_directory_and_its_model_folder(cases, tmp_path, capsys):
    """RUN and RUN/model both name the model; eval's results then go to RUN/logs/."""
    run = tmp_path / "run"
    shutil.copytree(cases["run"], run)
    for target in (run, run / "model"):
        code, text, err = run_cli(["generate", str(target), "--prompt", "the king", "--max-new-tokens", "3",
                                   "--seed", "0", "--device", "cpu"], capsys)
        assert code == 0, err
        assert text.startswith("the king")
    code, _, err = run_cli(["eval", str(run), "--perplexity", "--data", str(cases["data"]), "--seq-len", "16",
                            "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, err
    assert "perplexity" in json.loads((run / "logs" / "eval_results.json").read_text())
    # an earlier result is replaced; anything else at --output is not
    code, _, err = run_cli(["eval", str(run), "--perplexity", "--data", str(cases["data"]), "--seq-len", "16",
                            "--device", "cpu", "--no-progress", "--output", str(run / "logs" / "eval_results.json")],
                           capsys)
    assert code == 0, err


@pytest.mark.parametrize("command", ["generate", "eval", "export", "bench", "compare", "info"])
def test_every_flag_has_help(command):
    from mossnet.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    bare = [a.option_strings or [a.dest] for a in sub._actions if not a.help and a.dest != "help"]
    assert not bare, f"mossnet {command}: no help text for {bare}"


# ----------------------------------------------------------------------------- hooks into mossnet.data


def test_corpus_of_another_tokenizer_is_refused_by_fingerprint(cases, tmp_path, capsys, monkeypatch):
    """Same vocabulary size, different tokenizer: refused when both fingerprints are known
    (the corpus records one; the model's comes from its config or its stored tokenizer)."""
    import mossnet.data

    data = write_corpus(tmp_path / "data", np.arange(40).repeat(3), 40, tokenizer_fingerprint="a" * 64)
    argv = ["eval", str(cases["good"]), "--perplexity", "--data", str(data), "--seq-len", "16", "--device", "cpu",
            "--no-progress", "--output", str(tmp_path / "r.json")]
    monkeypatch.setattr(mossnet.data, "tokenizer_fingerprint", lambda tokenizer: "b" * 64, raising=False)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "was tokenized with another tokenizer than the model's" in err
    monkeypatch.setattr(mossnet.data, "tokenizer_fingerprint", lambda tokenizer: "a" * 64, raising=False)
    assert run_cli(argv, capsys)[0] == 0
    monkeypatch.setattr(mossnet.data, "tokenizer_fingerprint", None)  # as in a build without it
    assert run_cli(argv, capsys)[0] == 0  # nothing to compare with: the vocabulary check alone applies


def test_verify_corpus_is_used_where_present(cases, tmp_path, capsys, monkeypatch):
    import mossnet.data

    calls = []

    def verify_corpus(data_dir, splits, *, progress):
        calls.append((Path(data_dir), list(splits)))
        return {"message": "verified by verify_corpus"}

    monkeypatch.setattr(mossnet.data, "verify_corpus", verify_corpus, raising=False)
    code, text, err = run_cli(["eval", str(cases["good"]), "--perplexity", "--data", str(cases["data"]),
                               "--seq-len", "16", "--device", "cpu", "--no-progress", "--output",
                               str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    assert calls == [(cases["data"], ["val"])] and "verified by verify_corpus" in text
