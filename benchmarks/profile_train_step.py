"""Where one eager training step of a model spends its GPU time: the top CUDA kernels by total
time, from torch.profiler (bf16 autocast, forward + cross-entropy + backward + the trainer's AdamW
from ``build_optimizer``, random token ids; no router losses).

    python benchmarks/profile_train_step.py --model converted --batch 4 --seq 2048 --top 25
    python benchmarks/profile_train_step.py --model base --prefill --batch 1   # bench_model's prefill

``--prefill`` profiles the inference forward that fills a generation cache instead (bf16
weights with the fp32-kept ones, no grad, the last position's logits: ``bench_model.py``'s
prefill), and also prints its wall time against its kernel time: a wall time far above the
kernels' sum means the host, not the GPU, sets the speed. ``--host N`` then says where the host
time goes: the N Python functions with the most time of their own over the timed steps
(``cProfile``; calls into C, a kernel launch included, count as the caller's or as the builtin's).

Models are ``bench_layout_gate.MODELS`` (``base``, ``converted``). A diagnosis tool for the kernel
work: the numbers are per step, after three warm-up steps and the unprofiled timed ones; the step
is eager (not captured), so launch gaps are not in the kernel times.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pathlib
import pstats
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_layout_gate import MODELS  # noqa: E402
from bench_model import to_inference  # noqa: E402

from mossnet.bench.launches import kernel_table  # noqa: E402


def host_profile(step, steps: int, top: int) -> str:
    """The ``top`` functions by own (not cumulative) host time over ``steps`` calls of ``step``,
    as pstats prints them: where the Python side of an eager step spends its time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="converted", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--prefill", action="store_true", help="profile the cache-filling inference forward")
    ap.add_argument("--host", type=int, default=0, metavar="N",
                    help="also print the N Python functions with the most host time of their own (cProfile)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_train_step: needs a CUDA device")

    from mossnet import MossNetConfig, MossNetForCausalLM
    from mossnet.train.optim import build_optimizer

    spec = dict(MODELS[args.model])
    preset = spec.pop("preset", None)
    config = MossNetConfig.from_preset(preset, **spec) if preset else MossNetConfig(**spec)
    torch.manual_seed(0)
    model = MossNetForCausalLM(config).cuda().train()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device="cuda")
    if args.prefill:
        model = to_inference(model)

        @torch.no_grad()
        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1)
    else:
        optimizer = build_optimizer(model, 1e-4, 0.1)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=ids[:, :-1]).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) / args.steps * 1e3  # outside the profiler, which slows the host
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    rows = kernel_table(prof.key_averages(), args.steps)
    total = sum(ms for _, ms, _ in rows) or 1.0
    launches = sum(count for _, _, count in rows)
    what = "prefill" if args.prefill else "step"
    print(f"{args.model}: {total:.1f} ms of kernels per {what}, {launches} kernels, "
          f"{args.batch}x{args.seq} tokens; wall {wall_ms:.1f} ms per {what} (unprofiled)")
    # By time (where the GPU works), then by count (what a launch-bound eager step pays for).
    for title, order in (("by time", lambda row: -row[1]), ("by launches", lambda row: -row[2])):
        print(f"-- top {args.top} {title}")
        for name, ms, count in sorted(rows, key=order)[: args.top]:
            print(f"{ms:8.2f} ms {ms / total:6.1%} {count:6d}x  {name[:110]}")
    if args.host:
        print(f"-- host: top {args.host} functions by own time over {args.steps} {what}s (cProfile)")
        print(host_profile(step, args.steps, args.host))
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
