"""Which suspect makes graph-replayed decode differ from eager decode now and then
(``tests/models/test_cuda_graph_decode.py::test_graph_decode_equals_eager[True-3]`` failed one
run in eight on an H100; docs/GPU_NOTES.md, item 0).

Repeats that test's comparison ``--repeats`` times in one process, under one condition, on a new
random prompt each time, and prints how many repeats differed and, for each that did, the
largest difference per (row, step):

    python benchmarks/diagnose_graph_decode.py --condition default --repeats 20
    python benchmarks/diagnose_graph_decode.py --condition reference      # fused_ops="reference"
    python benchmarks/diagnose_graph_decode.py --condition no-autotune    # first config, untimed
    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/diagnose_graph_decode.py --condition default

How to read it: failures only under "default" (and never under "reference") point at a fused
kernel; failures that also come with ``--condition no-autotune`` rule out a run-dependent tuning
choice; failures that vanish with deterministic cuBLAS point at run-dependent GEMM sums. Every
repeat in one process shares the Triton tuning made by the first, so a failure rate that differs
between processes and within one says which of the two it is.

What it found (2026-12-07, H100): differences under "default", "no-autotune" and deterministic
cuBLAS, none under "reference": a fused kernel. It was the fused decode step, whose in-place
window shift and state update raced between warps (BENCHMARKS.md, "Fourth run"; fixed since).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--condition", default="default", choices=["default", "reference", "no-autotune"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--no-autocast", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("diagnose_graph_decode: needs a CUDA device")
    if args.condition == "no-autotune":
        os.environ["MOSSNET_TRITON_AUTOTUNE"] = "0"  # read when the model builds its policy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
    from test_cuda_graph_decode import _eager_and_graph, tiny_model  # the test's own helpers

    model = tiny_model().cuda()
    if args.condition == "reference":
        model.execution_policy = model.execution_policy.replace(fused_ops="reference")
    failures = 0
    for i in range(args.repeats):
        prompt = torch.randint(0, model.config.vocab_size, (args.batch, 13), device="cuda")
        (eager, _), (graph, _) = _eager_and_graph(model, prompt, args.steps, not args.no_autocast)
        diff = (graph - eager).abs()
        if not torch.allclose(graph, eager, rtol=1e-5, atol=1e-5):
            failures += 1
            print(f"repeat {i}: {(diff > 1e-5).float().mean().item():.1%} of logits differ, largest "
                  f"|graph - eager| per (row, step):\n{diff.amax(-1)}")
        else:
            print(f"repeat {i}: equal")  # a run cut by a timeout still says how far it got
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "default")
    print(f"{args.condition} (cuBLAS workspace {cublas}, batch {args.batch}, autocast {not args.no_autocast}): "
          f"{failures} of {args.repeats} repeats differed")


if __name__ == "__main__":
    main()
