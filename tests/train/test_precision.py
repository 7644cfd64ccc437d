"""The one rule for which autocast a run uses (``mossnet.train.precision``)."""

from __future__ import annotations

import contextlib

import torch

from mossnet.train.precision import autocast_factory, uses_bf16


def test_fp32_on_cpu_unless_bf16_is_asked_for():
    cpu = torch.device("cpu")
    assert not uses_bf16(cpu, "auto") and not uses_bf16(cpu, "fp32") and uses_bf16(cpu, "bf16")
    assert autocast_factory(cpu, "auto") is contextlib.nullcontext
    with autocast_factory(cpu, "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_cache_enabled()


def test_the_captured_form_has_no_cast_cache():
    with autocast_factory(torch.device("cpu"), "bf16", capture=True)():
        assert torch.is_autocast_enabled("cpu") and not torch.is_autocast_cache_enabled()
