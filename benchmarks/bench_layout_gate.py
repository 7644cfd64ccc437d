"""Training tokens/s of two source trees of MossNet, side by side on one card: the check that a
refactor of the layer did not slow training (issue: at most 3% slower).

Each measurement runs in its own process with ``PYTHONPATH`` set to one tree's ``src``; the
trees alternate (A, B, A, B, ...) and the median of the repeats is reported. The step is the
trainer's CUDA-graph step (``mossnet.train.cuda_graph_step.CapturedTrainStep``: forward,
backward, clipping, fused AdamW, replayed), with bf16 autocast, on random token ids.

    python benchmarks/bench_layout_gate.py --trees before=/path/old/src,after=src --repeats 3 --out gate.json

Models: ``base`` (the routed preset) and ``converted`` (a SmolLM2-135M-shaped dense MossNet:
30 layers, d 576, 9 experts all active, state_update "all", P = N = 64, a dense MLP of 1536).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {
    "base": dict(preset="base"),
    "converted": dict(vocab_size=49152, d_model=576, n_layers=30, ssm_experts=9, ssm_top_k=9, state_update="all",
                      ssm_head_dim=64, ssm_state_dim=64, mlp_experts=1, mlp_top_k=1, mlp_hidden_dim=1536),
}


def measure(model_name: str, batch: int, seq: int, steps: int) -> dict:
    """Tokens/s of ``steps`` replayed training steps (after capture), in this process."""
    import torch
    import torch.nn.functional as F

    from mossnet import MossNetConfig, MossNetForCausalLM
    from mossnet.train.cuda_graph_step import CapturedTrainStep
    from mossnet.train.optim import build_optimizer

    spec = dict(MODELS[model_name])
    preset = spec.pop("preset", None)
    config = MossNetConfig.from_preset(preset, **spec) if preset else MossNetConfig(**spec)
    torch.manual_seed(0)
    model = MossNetForCausalLM(config).cuda().train()
    optimizer = build_optimizer(model, 1e-4, 0.1)

    def loss_fn(ids, labels):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=ids, output_router_stats=True)
            ce = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]).float(), labels.reshape(-1))
            aux = out.aux_loss
            return ce + aux, ce, aux, out.router_load or {}

    step = CapturedTrainStep(model, optimizer, loss_fn, grad_clip=1.0)
    ids = torch.randint(0, config.vocab_size, (1, batch, seq + 1), device="cuda")
    seconds = steps * seconds_per_step(step, ids, steps)
    return {"tokens_per_s": steps * batch * seq / seconds, "step_ms": 1e3 * seconds / steps,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30}


def seconds_per_step(step, ids, steps: int) -> float:
    """Mean seconds of ``steps`` calls of ``step(inputs, labels)`` on ``ids`` (1, batch, seq + 1),
    after four untimed calls (a captured step: two eager warm-ups, the capture, one replay)."""
    import torch

    for _ in range(4):
        step(ids[..., :-1], ids[..., 1:])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(ids[..., :-1], ids[..., 1:])
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def add_training_arguments(ap: argparse.ArgumentParser, steps: int) -> None:
    """The options every training-speed comparison of these models takes."""
    ap.add_argument("--models", default="base,converted")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--converted-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", default="after=src", help="NAME=SRC_DIR,... (each a MossNet src/ directory)")
    add_training_arguments(ap, steps=20)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, batch = args.child.split(":")
        print(json.dumps(measure(name, int(batch), args.seq, args.steps)))
        return
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    results: dict = {"card": None, "command": " ".join(sys.argv), "runs": []}
    for model in args.models.split(","):
        batch = args.converted_batch if model == "converted" else args.batch
        for repeat in range(args.repeats):
            for tree, src in trees.items():
                env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
                proc = subprocess.run([sys.executable, __file__, "--child", f"{model}:{batch}", "--seq", str(args.seq),
                                       "--steps", str(args.steps)], capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(f"{model} {tree}: failed\n{proc.stderr[-2000:]}", flush=True)
                    continue
                run = {"model": model, "tree": tree, "repeat": repeat, "batch": batch, "seq": args.seq,
                       **json.loads(proc.stdout.strip().splitlines()[-1])}
                results["runs"].append(run)
                print(f"{model:10s} {tree:8s} #{repeat}: {run['tokens_per_s']:,.0f} tok/s "
                      f"({run['step_ms']:.1f} ms/step, peak {run['peak_gb']:.1f} GB)", flush=True)
    summary = {}
    for model in args.models.split(","):
        for tree in trees:
            values = [r["tokens_per_s"] for r in results["runs"] if r["model"] == model and r["tree"] == tree]
            if values:
                summary[f"{model}/{tree}"] = statistics.median(values)
    results["median_tokens_per_s"] = summary
    try:
        import torch

        results["card"] = torch.cuda.get_device_name()
    except Exception:  # the summary is still worth writing
        pass
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
