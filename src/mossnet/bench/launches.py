"""Kernel launches per optimiser step, counted with ``torch.profiler``.

A training step that issues many small kernels is bound by the host that launches them, not by
the GPU. This module profiles whole steps and counts, per step:

* ``device_kernels``: kernels that ran on the GPU (CUDA kernel events; memory copies and
  memsets are counted apart as ``device_memcpy`` / ``device_memset``). Kernels replayed from a
  CUDA graph are counted here too: a captured step runs as many kernels as an eager one.
* ``host_launches``: kernel launches issued by the host (``cudaLaunchKernel``,
  ``cuLaunchKernel``, ... runtime / driver calls, Triton's included) and ``graph_launches``
  (``cudaGraphLaunch``): what the host pays for. A captured step issues one graph launch.
* ``cpu_ops``: compute operators, the ATen operators that do work themselves: not views or
  allocations (``as_strided``, ``view``, ``empty``, ...: no kernel), and calling no other
  compute operator (``linear`` is counted at the ``mm`` / ``addmm`` it calls). On the CPU this
  is the count that stands for kernels (about one kernel each), and it makes the code path
  testable without a GPU. ``top_ops``: the most frequent of them (name -> calls per step).

Counts are means over the profiled steps (a whole number when every step is the same).

Example:
    >>> import torch
    >>> a, b = torch.ones(3), torch.ones(3)
    >>> counts = count_launches(lambda: a + b + b, torch.device("cpu"), steps=2)
    >>> counts["cpu_ops"], counts["top_ops"]["aten::add"]
    (2.0, 2.0)
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Callable, Iterable

import torch

# Host-side calls that launch one kernel (CUDA runtime and driver API spellings).
_KERNEL_LAUNCH = re.compile(r"^(cudaLaunchKernel|cuLaunchKernel|cudaLaunchCooperativeKernel|cuLaunchCooperativeKernel)")
_GRAPH_LAUNCH = re.compile(r"^(cudaGraphLaunch|cuGraphLaunch)")
TOP_OPS = 15
# Operators that allocate or reinterpret memory without a kernel, beyond those whose schema says
# they return a view of their input (found by ``_returns_a_view``).
_NO_KERNEL_OPS = frozenset({"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::_unsafe_view",
                            "aten::item", "aten::_local_scalar_dense", "aten::set_"})


def count_launches(step: Callable[[], object], device: torch.device, steps: int = 1, warmup: int = 0) -> dict:
    """Run ``warmup`` unprofiled calls of ``step``, then profile ``steps`` calls and return the
    per-step counts described in the module docstring (plus ``steps`` and ``device``)."""
    from torch.profiler import ProfilerActivity, profile

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    counts = summarize_events(prof.events(), steps)
    counts["device"] = "cuda" if cuda else "cpu"
    return counts


def kernel_table(averages: Iterable, calls: int = 1) -> list[tuple[str, float, int]]:
    """[(kernel name, ms per call, launches per call)], most time first, from a profile's
    ``key_averages()`` over ``calls`` calls: where the GPU time of one call goes (device events
    only; host-side ops are left out)."""
    rows = [(e.key, e.self_device_time_total / calls / 1e3, e.count // calls) for e in averages if _is_device_event(e)]
    return sorted(rows, key=lambda row: -row[1])


def summarize_events(events: Iterable, steps: int = 1) -> dict:
    """Per-step counts from profiler ``FunctionEvent``s (``prof.events()``)."""
    device_kinds: Counter = Counter()
    host: Counter = Counter()
    leaf_ops: Counter = Counter()
    for event in events:
        name = event.name
        if _is_device_event(event):
            device_kinds[_device_kind(name)] += 1
        elif _KERNEL_LAUNCH.match(name):
            host["kernel"] += 1
        elif _GRAPH_LAUNCH.match(name):
            host["graph"] += 1
        elif _is_compute_op(name) and not _calls_compute_op(event):
            leaf_ops[name] += 1
    per_step = lambda n: n / steps  # noqa: E731
    return {
        "steps": steps,
        "device_kernels": per_step(device_kinds["kernel"]),
        "device_memcpy": per_step(device_kinds["memcpy"]),
        "device_memset": per_step(device_kinds["memset"]),
        "host_launches": per_step(host["kernel"]),
        "graph_launches": per_step(host["graph"]),
        "cpu_ops": per_step(sum(leaf_ops.values())),
        "top_ops": {name: per_step(n) for name, n in leaf_ops.most_common(TOP_OPS)},
    }


def _is_device_event(event) -> bool:
    device_type = getattr(event, "device_type", None)
    return device_type is not None and device_type != torch.autograd.DeviceType.CPU


def _device_kind(name: str) -> str:
    if name.startswith("Memcpy"):
        return "memcpy"
    if name.startswith("Memset"):
        return "memset"
    return "kernel"


@functools.lru_cache(maxsize=None)
def _is_compute_op(name: str) -> bool:
    """An ATen operator that may run a kernel: not an allocation, not a view."""
    return name.startswith("aten::") and name not in _NO_KERNEL_OPS and not _returns_a_view(name)


def _returns_a_view(name: str) -> bool:
    """Whether some overload of ATen operator ``name`` returns only aliases of its inputs that it
    does not write (``Tensor(a)`` in its schema: ``view``, ``t``, ``expand``, ``reshape``, ...).
    In-place operators (``Tensor(a!)``) do write, so they are compute."""
    try:  # an unknown name raises AttributeError or (older torch) RuntimeError: count it as compute
        packet = getattr(torch.ops.aten, name.removeprefix("aten::"))
        schemas = [getattr(packet, overload)._schema for overload in packet.overloads()]
    except (AttributeError, RuntimeError):
        return False
    return any(s.returns and all(r.alias_info is not None and not r.alias_info.is_write for r in s.returns)
               for s in schemas)


def _calls_compute_op(event) -> bool:
    """Whether a compute operator runs below ``event`` in the profiler's tree (then ``event`` is
    a composite, counted at those operators)."""
    stack = list(getattr(event, "cpu_children", None) or [])
    while stack:
        child = stack.pop()
        if _is_compute_op(child.name):
            return True
        stack.extend(getattr(child, "cpu_children", None) or [])
    return False
