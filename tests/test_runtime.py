"""``mossnet.runtime``: device strings and dtype names, a one-line DeviceError for every device
this machine cannot provide (the CUDA cases are simulated, so they run on any machine), the
autocast rule and the machine description."""

from __future__ import annotations

import argparse
import contextlib

import pytest
import torch

from mossnet import runtime
from mossnet.errors import ConfigError, DeviceError, OptionError


@pytest.mark.parametrize("text, want", [("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"), ("cuda:3", "cuda:3")])
def test_device_name_accepts_the_documented_forms(text, want):
    assert runtime.device_name(text) == want


@pytest.mark.parametrize("text", ["GPU:0", "cuda:", "cuda:x", "cpu:1", "auto:0", "cuda:-1", "", "mps"])
def test_device_name_refuses_everything_else(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected auto, cpu, cuda or cuda:N"):
        runtime.device_name(text)


def test_resolve_device_cpu_and_auto():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device("auto") == runtime.resolve_device(None)


def test_resolve_device_refuses_a_bogus_string():
    with pytest.raises(DeviceError, match=r"^--device gpu: not a device; expected auto, cpu, cuda or cuda:N$"):
        runtime.resolve_device("gpu")


def _fake_cuda(monkeypatch, *, built: bool, available: bool, count: int = 0):
    monkeypatch.setattr(torch.version, "cuda", "12.8" if built else None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cuda_on_a_cpu_build(monkeypatch):
    _fake_cuda(monkeypatch, built=False, available=False)
    with pytest.raises(DeviceError, match=r"--device cuda: this PyTorch .* was built without CUDA; use --device cpu"):
        runtime.resolve_device("cuda")
    assert runtime.resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_visible_gpu(monkeypatch):
    _fake_cuda(monkeypatch, built=True, available=False)
    with pytest.raises(DeviceError, match=r"--gpu cuda:0: no CUDA GPU is visible"):
        runtime.resolve_device("cuda:0", option="--gpu")


def test_cuda_index_past_the_last_gpu(monkeypatch):
    _fake_cuda(monkeypatch, built=True, available=True, count=2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda:1")
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError, match=r"--device cuda:2: this machine has 2 visible CUDA devices \(cuda:0 to cuda:1\)"):
        runtime.resolve_device("cuda:2")


@pytest.mark.parametrize("text, want", [("fp32", "float32"), ("float32", "float32"), ("BF16", "bfloat16"),
                                        ("bfloat16", "bfloat16"), ("fp16", "float16"), ("torch.float16", "float16"),
                                        ("auto", "auto")])
def test_dtype_names(text, want):
    assert runtime.dtype_name(text) == want


def test_dtype_name_refuses_others():
    with pytest.raises(argparse.ArgumentTypeError, match="expected one of auto, fp32"):
        runtime.dtype_name("int8")
    with pytest.raises(OptionError, match="--dtype fp8"):
        runtime.resolve_dtype("fp8")


def test_resolve_dtype():
    assert runtime.resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert runtime.resolve_dtype("auto", "cuda") is torch.bfloat16
    assert runtime.resolve_dtype(None) is torch.float32
    assert runtime.resolve_dtype("bf16") is torch.bfloat16
    assert runtime.resolve_dtype("float16", "cuda") is torch.float16
    assert runtime.resolve_dtype(torch.float64) is torch.float64


def test_autocast_fp32_on_cpu_unless_bf16_is_asked_for():
    cpu = torch.device("cpu")
    assert not runtime.uses_bf16(cpu, "auto") and not runtime.uses_bf16(cpu, "fp32") and runtime.uses_bf16(cpu, "bf16")
    assert runtime.autocast_factory(cpu, "auto") is contextlib.nullcontext
    with runtime.autocast_factory(cpu, "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_cache_enabled()


def test_autocast_auto_is_bf16_on_a_cuda_card_that_has_it(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.uses_bf16(cuda, "auto") and not runtime.uses_bf16(cuda, "fp32")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not runtime.uses_bf16(cuda, "auto") and runtime.uses_bf16(cuda, "bf16")


def test_the_captured_form_has_no_cast_cache():
    with runtime.autocast_factory(torch.device("cpu"), "bf16", capture=True)():
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
    with runtime.autocast_for_capture("cpu", None):
        assert not torch.is_autocast_enabled("cpu")


def test_the_training_dtypes_are_the_autocast_vocabulary():
    from mossnet.train.config import DTYPES, TrainConfig

    assert DTYPES == runtime.AUTOCAST_DTYPES
    assert set(runtime.AUTOCAST_DTYPES) - {"auto"} <= set(runtime.DTYPE_ALIASES)  # both vocabularies spell them alike
    with pytest.raises(ConfigError, match="dtype must be one of"):
        TrainConfig(dtype="fp16").validate()


def test_machine_info_names_this_machine():
    import platform

    info = runtime.machine_info(torch.device("cpu"))
    assert info["python"] == platform.python_version() and info["torch"] == torch.__version__
    assert info["cpu"] and info["cpu_count"] >= 1
    assert info["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert info["memory_gb"] is None or info["memory_gb"] > 0
