"""Host work of MossNet's CUDA code path, measured on a CPU, with the GPU kernels taken out.

Why: a batch-1 prefill on the card is bound by the host (BENCHMARKS.md: 3.1 ms of kernels in a
49.6 ms prefill of `base`), so the host's Python and dispatch work per layer is the quantity to
shrink, and it can be measured without a card.

How: Triton's CPU interpreter runs the CUDA code path (the Triton scan and fused kernels, the
expert products through ``torch._grouped_mm``, which also runs on a CPU; the model and these
switches are ``count_step_ops.py``'s, the launch-count stand-in). One real
forward (and backward, with ``--mode train``) checks that the path runs. Then every kernel launch
is replaced by a stub that only zero-fills the integer tensors it is given (index tensors stay in
range; the path makes no host decision on tensor values), and the stub's own time is subtracted.
The model has `base`'s structure (layers, experts, top-k, routing) at small widths, so aten's CPU
compute is small beside the host work. What is measured: Python, autograd and aten dispatch per
forward. Not in it: Triton's compiled launcher and ``cudaLaunchKernel`` (neither exists on a
CPU), so on a card add their cost per launch; the launch count is printed.
Run it alone: a second busy process on a 2-core machine doubles the numbers.

A/B on one host in one run: ``--compare OTHER_SRC`` (for example ``git archive <commit> src | tar
-x -C /tmp/old``, then ``--compare /tmp/old/src``) alternates fresh processes of this checkout's
``src`` and the other one, and reports the minimum over the rounds of each; this machine's timing
noise is large (medians 20-40% above minimums), so compare minimums.

    python benchmarks/host_work_cpu.py [--mode prefill|train] [--tokens 16] [--compare SRC] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
os.environ.setdefault("MOSSNET_TRITON_AUTOTUNE", "0")  # the interpreter cannot time configs

ROOT = Path(__file__).resolve().parents[1]
LAUNCHES = {"seconds": 0.0, "count": 0, "census": None}


def _import_mossnet(src: Path):
    """Put ``src`` first on the path and import mossnet from it (then the shared helpers)."""
    sys.path.insert(0, str(src))
    import mossnet

    if Path(mossnet.__file__).resolve().parents[1] != src.resolve():
        raise SystemExit(f"host_work_cpu: imported mossnet from {mossnet.__file__}, not from {src}")
    sys.path.insert(1, str(Path(__file__).resolve().parent))


def build(tokens: int, mode: str):
    """`base` at small widths with the CUDA choices forced (count_step_ops.small_model)."""
    import torch
    from count_step_ops import small_model

    model, config = small_model("base", interpreting=True)
    model.train(mode == "train")
    ids = torch.randint(0, config.vocab_size, (1, tokens))
    return model, ids, config


def step_of(model, ids, mode: str):
    import torch

    if mode == "prefill":  # what generate() runs for an unpadded prompt
        def prefill():
            with torch.no_grad():
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return prefill

    def train_step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
    return train_step


def stub_kernel_launches() -> None:
    import torch
    from triton.runtime import interpreter

    def launch(self, *args, **kwargs):
        start = time.perf_counter()
        census = LAUNCHES["census"]
        if census is not None:  # the stub's own fills are not the path's ops
            census.in_kernel += 1
        for a in args:
            if isinstance(a, torch.Tensor) and not a.is_floating_point():
                a.data.zero_()  # .data: no version bump, so saved tensors stay valid for a backward
        if census is not None:
            census.in_kernel -= 1
        LAUNCHES["seconds"] += time.perf_counter() - start
        LAUNCHES["count"] += 1

    interpreter.InterpretedFunction.run = launch


def aten_ops_per_call(step) -> int:
    """Aten ops that reach a kernel in one call, counted by count_step_ops' census (its free-op
    list; not the stubs' own fills)."""
    from count_step_ops import _Census

    census = _Census()
    LAUNCHES["census"] = census
    try:
        with census:
            step()
    finally:
        LAUNCHES["census"] = None
    return sum(census.by_op.values())


def measure(src: Path, mode: str, tokens: int, iters: int, profile_top: int = 0) -> dict:
    _import_mossnet(src)
    import torch

    from count_step_ops import grouped_gemm_on_cpu

    torch.set_num_threads(1)
    model, ids, config = build(tokens, mode)
    step = step_of(model, ids, mode)
    with grouped_gemm_on_cpu():
        return _measure_steps(step, config, src, mode, tokens, iters, profile_top)


def _measure_steps(step, config, src: Path, mode: str, tokens: int, iters: int, profile_top: int) -> dict:
    step()  # the real kernels, under the interpreter: the path runs
    stub_kernel_launches()
    for _ in range(3):
        step()
    host = []
    for _ in range(iters):
        LAUNCHES["seconds"], LAUNCHES["count"] = 0.0, 0
        start = time.perf_counter()
        step()
        host.append(time.perf_counter() - start - LAUNCHES["seconds"])
    launches = LAUNCHES["count"]
    layers = config.n_layers
    if profile_top:
        from profile_train_step import host_profile  # the card's profiler prints the same table

        print(host_profile(step, 10, profile_top), file=sys.stderr)
    return dict(src=str(src), mode=mode, tokens=tokens, layers=layers, host_ms_min=min(host) * 1e3,
                host_ms_median=statistics.median(host) * 1e3, host_us_per_layer_min=min(host) * 1e6 / layers,
                launches=launches, aten_ops=aten_ops_per_call(step))


def _child(src: Path, args) -> dict:
    cmd = [sys.executable, "-W", "ignore", __file__, "--src", str(src), "--mode", args.mode, "--tokens",
           str(args.tokens), "--iters", str(args.iters), "--child"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"host_work_cpu: the run of {src} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("prefill", "train"), default="prefill")
    ap.add_argument("--tokens", type=int, default=16, help="prompt (or training sequence) length, batch 1")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per process")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per checkout")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the checkout's src to measure")
    ap.add_argument("--compare", type=Path, default=None, help="a second src, measured in alternating rounds")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--host", type=int, default=0, metavar="N",
                    help="also print (to stderr, in one process) the N functions with the most own host time")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child or args.host:
        print(json.dumps(measure(args.src, args.mode, args.tokens, args.iters, args.host)))
        return
    sources = [args.src] + ([args.compare] if args.compare else [])
    for src in sources:
        if not (src / "mossnet" / "__init__.py").is_file():
            raise SystemExit(f"host_work_cpu: {src} holds no mossnet package (give a checkout's src folder)")
    runs: list[list[dict]] = [[] for _ in sources]
    for round_ in range(args.rounds):
        for results, src in zip(runs, sources):
            results.append(_child(src, args))
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{src} {results[-1]['host_ms_min']:.2f} ms" for results, src in zip(runs, sources)), file=sys.stderr)
    rows = []
    for results in runs:
        best = min(results, key=lambda r: r["host_ms_min"])
        rows.append(dict(best, rounds=[round(r["host_ms_min"], 2) for r in results]))
    print(f"host work of the CUDA code path ({args.mode}, batch 1 x {args.tokens} tokens, `base` structure at "
          f"small widths, kernels stubbed), min over {args.rounds} rounds x {args.iters} calls:")
    print("| src | host ms per call | us per layer | kernel launches | aten ops | each round's min ms |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['src']} | {r['host_ms_min']:.2f} | {r['host_us_per_layer_min']:.0f} | {r['launches']} | "
              f"{r['aten_ops']} | {r['rounds']} |")
    if len(rows) == 2:
        print(f"ratio (this checkout / the other): {rows[0]['host_ms_min'] / rows[1]['host_ms_min']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, results=rows), indent=1))


if __name__ == "__main__":
    main()
