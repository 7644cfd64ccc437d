"""Capturing a function in a CUDA graph, the way PyTorch's CUDA-graph notes prescribe: eager
runs on a side stream first (lazy initialisation, allocator warm-up, cuBLAS handles, Triton
autotuning, torch.compile), then one capture. Used by the captured decode step
(``models/mossnet/cuda_graph_decode.py``), the captured training step
(``train/cuda_graph_step.py``) and the GPU benchmarks.

Example (on a GPU)::

    graph, out = capture(lambda: model(ids).logits, warmup=2)
    ids.copy_(new_ids); graph.replay()   # ``out`` now holds the new logits
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def run_on_side_stream(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a fresh side stream, ordered after and before the current stream's work."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def capture(fn: Callable[[], Any], warmup: int = 0, pool=None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """``warmup`` eager calls of ``fn`` on a side stream, then one captured call.

    Returns the graph and what the captured call returned: static tensors that every
    ``graph.replay()`` overwrites. ``pool``: a memory pool shared with other graphs
    (``torch.cuda.graph_pool_handle()``), or None for a private one.
    """
    if warmup > 0:
        run_on_side_stream(lambda: [fn() for _ in range(warmup)])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out
