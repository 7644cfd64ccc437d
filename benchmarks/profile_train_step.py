"""Where one eager training step of a model spends its GPU time: the top CUDA kernels by total
time, from torch.profiler (bf16 autocast, forward + backward + fused AdamW, random token ids).

    python benchmarks/profile_train_step.py --model converted --batch 4 --seq 2048 --top 25

Models are ``bench_layout_gate.MODELS`` (``base``, ``converted``). A diagnosis tool for the kernel
work: the numbers are per step, after two warm-up steps; the step is eager (not captured), so
launch gaps are not in the kernel times.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_layout_gate import MODELS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="converted", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
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
    optimizer = build_optimizer(model, 1e-4, 0.1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=ids[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    launches = sum(e.count for e in events) // args.steps
    print(f"{args.model}: {total / args.steps / 1e3:.1f} ms of kernels per step, {launches} kernels, "
          f"{args.batch}x{args.seq} tokens")
    # By time (where the GPU works), then by count (what a launch-bound eager step pays for).
    for title, key in (("by time", lambda e: -e.self_device_time_total), ("by launches", lambda e: -e.count)):
        print(f"-- top {args.top} {title}")
        for e in sorted(events, key=key)[: args.top]:
            share = e.self_device_time_total / total
            per_step = e.self_device_time_total / args.steps / 1e3
            print(f"{per_step:8.2f} ms {share:6.1%} {e.count // args.steps:6d}x  {e.key[:110]}")


if __name__ == "__main__":
    main()
