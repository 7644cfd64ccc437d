"""Kernel launches per step (``mossnet.bench.launches``): the CPU operator count on steps whose
operators are known, the CUDA event classification on recorded event shapes, the trainer's step
on a tiny MossNet, and (GPU only) eager against captured steps."""

from __future__ import annotations

import doctest
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mossnet import MossNetConfig, MossNetForCausalLM
from mossnet.bench import launches
from mossnet.bench.launches import count_launches, summarize_events
from mossnet.bench.training import trainer_step

CPU = torch.device("cpu")


def test_docstring_example():
    assert doctest.testmod(launches).failed == 0


def test_counts_each_operator_once_per_step():
    a, b = torch.ones(4), torch.ones(4)

    def step():
        return torch.mul(a + b, b) + a

    for steps in (1, 3):
        counts = count_launches(step, CPU, steps=steps)
        assert counts["cpu_ops"] == 3.0 and counts["steps"] == steps
        assert counts["top_ops"] == {"aten::add": 2.0, "aten::mul": 1.0}
        assert counts["device_kernels"] == counts["host_launches"] == counts["graph_launches"] == 0


def test_composites_and_views_are_not_counted():
    """``linear`` is counted at the matmul it calls; the transposes and views are no kernels."""
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    counts = count_launches(lambda: torch.nn.functional.linear(x, w).view(12), CPU)
    assert counts["cpu_ops"] == 1.0
    (name,) = counts["top_ops"]
    assert name in ("aten::mm", "aten::addmm")


def _event(name, device_type=torch.autograd.DeviceType.CPU, children=()):
    return SimpleNamespace(name=name, device_type=device_type, cpu_children=list(children))


def test_cuda_events_are_classified():
    """The shapes a CUDA profile has: device kernels / copies / memsets, host launch calls of
    the runtime and the driver API (Triton), and graph launches."""
    cuda = torch.autograd.DeviceType.CUDA
    # The profiler's list is flat: an operator's children are in it too.
    transpose, addmm = _event("aten::t"), _event("aten::addmm")
    events = ([_event("void gemm_kernel<...>", cuda)] * 6 + [_event("Memcpy HtoD (Pageable -> Device)", cuda)] * 2
              + [_event("Memset (Device)", cuda)] + [_event("cudaLaunchKernel")] * 4 + [_event("cuLaunchKernelEx")] * 2
              + [_event("cudaGraphLaunch")] * 2 + [_event("cudaStreamSynchronize")]
              + [_event("aten::linear", children=[transpose, addmm]), transpose, addmm])
    counts = summarize_events(events, steps=2)
    assert counts["device_kernels"] == 3.0 and counts["device_memcpy"] == 1.0 and counts["device_memset"] == 0.5
    assert counts["host_launches"] == 3.0 and counts["graph_launches"] == 1.0
    assert counts["cpu_ops"] == 0.5 and counts["top_ops"] == {"aten::addmm": 0.5}


def _tiny_step(graphed: bool, device=CPU):
    if device.type == "cuda":  # the shape tests/train/test_cuda_graph_step.py captures on the GPU
        config = MossNetConfig.from_preset("tiny", n_layers=2, d_model=64, vocab_size=256)
    else:
        config = MossNetConfig.from_preset("tiny", vocab_size=64, d_model=32, n_layers=1, ssm_head_dim=8,
                                           ssm_state_dim=4, mlp_hidden_dim=32)
    model = MossNetForCausalLM(config).to(device)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 64))
    return trainer_step(model, ids, ids, graphed=graphed)


def test_trainer_step_count_is_stable_per_step():
    step = _tiny_step(graphed=False)
    one = count_launches(step, CPU, steps=1, warmup=1)
    two = count_launches(step, CPU, steps=2)
    assert one["cpu_ops"] > 50  # forward, backward, clipping and AdamW of a whole model
    assert one["cpu_ops"] == two["cpu_ops"]
    assert sum(one["top_ops"].values()) <= one["cpu_ops"]


@pytest.mark.gpu
def test_captured_step_launches_one_graph():
    """On the GPU: the eager step launches every kernel from the host; the captured one runs
    about as many kernels from one graph launch."""
    device = torch.device("cuda")
    eager = count_launches(_tiny_step(False, device), device, steps=1, warmup=2)
    captured = count_launches(_tiny_step(True, device), device, steps=1, warmup=3)
    assert eager["device_kernels"] > 100 and eager["host_launches"] >= 0.5 * eager["device_kernels"]
    assert eager["graph_launches"] == 0 and captured["graph_launches"] == 1
    assert captured["host_launches"] < 0.1 * eager["host_launches"]


def test_kernel_table_keeps_device_events_per_call_most_time_first():
    from types import SimpleNamespace

    import torch

    from mossnet.bench.launches import kernel_table

    def avg(key, us, count, device):
        kind = torch.autograd.DeviceType.CUDA if device else torch.autograd.DeviceType.CPU
        return SimpleNamespace(key=key, self_device_time_total=us, count=count, device_type=kind)

    averages = [avg("aten::mm", 0.0, 20, False), avg("fwd_h_kernel", 4000.0, 10, True),
                avg("bwd_dqk_kernel", 9000.0, 10, True), avg("memset", 10.0, 30, True)]
    rows = kernel_table(averages, calls=10)
    assert [name for name, _, _ in rows] == ["bwd_dqk_kernel", "fwd_h_kernel", "memset"]
    assert rows[0] == ("bwd_dqk_kernel", 0.9, 1) and rows[2] == ("memset", 0.001, 3)
