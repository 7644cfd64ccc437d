"""Shared fixtures for the MossNet test suite.

* one intra-op thread (unless OMP_NUM_THREADS is set): the tensors here are tiny.
* under ``TRITON_INTERPRET=1``, :mod:`triton_interpreter_fix` lets Triton's CPU interpreter run
  the scan's kernels with NumPy >= 2.4, and :mod:`triton_bounds` checks that every load, store
  and atomic of every kernel stays inside its tensor arguments (``MOSSNET_TRITON_BOUNDS=0``: off).
* ``seed`` (autouse): every test starts from the same RNG state, so failures reproduce.
* ``gpu`` marker: tests marked ``@pytest.mark.gpu`` are skipped when CUDA is absent.
* ``tiny_config`` / ``make_model``: factories for tiny models that run in milliseconds on a
  2-core CPU; ``make_model`` randomises the router weights (std 0.5) so that routing is
  non-trivial (the default init gives near-uniform routers and hides routing bugs).
"""

from __future__ import annotations

import os
import random

import pytest
import torch


def pytest_configure(config):
    # The tests use tiny tensors: one intra-op thread is faster than two, and far faster when
    # the CPU is shared (OpenMP barriers between busy cores cost ~100x on tiny ops). Set
    # OMP_NUM_THREADS to override.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    if os.environ.get("TRITON_INTERPRET") == "1":  # Triton kernels on the CPU (see the modules)
        from triton_interpreter_fix import fix_interpreter_for_numpy2

        fix_interpreter_for_numpy2()
        if os.environ.get("MOSSNET_TRITON_BOUNDS", "1") != "0":
            from triton_bounds import check_bounds_in_interpreter

            check_bounds_in_interpreter()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def seed():
    """Seed torch and random; returns the seed."""
    value = 1234
    torch.manual_seed(value)
    random.seed(value)
    return value


TINY = dict(
    vocab_size=64,
    d_model=16,
    n_layers=2,
    ssm_experts=4,
    ssm_top_k=2,
    ssm_head_dim=8,
    ssm_state_dim=4,
    conv_kernel=4,
    mlp_experts=4,
    mlp_top_k=2,
    mlp_hidden_dim=32,
    chunk_size=8,
)


@pytest.fixture
def tiny_config():
    """``tiny_config(**overrides) -> MossNetConfig``: a model of a few thousand parameters."""
    from mossnet import MossNetConfig

    def make(**overrides):
        return MossNetConfig(**{**TINY, **overrides})

    return make


def randomize_routers(model: torch.nn.Module, std: float = 0.5) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.normal_(std=std)


@pytest.fixture
def make_model(tiny_config):
    """``make_model(router_std=0.5, seed=0, **config_overrides) -> MossNetForCausalLM`` in
    eval mode, with random routers (and ``initializer_range=0.2`` by default so that logits
    are far from ties)."""
    from mossnet import MossNetForCausalLM

    def make(router_std: float = 0.5, seed: int = 0, **overrides):
        overrides.setdefault("initializer_range", 0.2)
        torch.manual_seed(seed)
        model = MossNetForCausalLM(tiny_config(**overrides))
        randomize_routers(model, router_std)
        return model.eval()

    return make


@pytest.fixture
def randomize():
    """``randomize(model, std=0.5)``: re-draw every router weight of a model or layer."""
    return randomize_routers
