"""CPU seconds of one training step (forward + backward) of a converted-shaped dense MossNet
(E = k = 9, ``state_update="all"``, P = N = 64, d 576), with the MoSSE's uniform segments (the
default when there is no padding) against the same step forced onto the packed path.

    taskset -c 0,1 python benchmarks/bench_uniform_segments.py --layers 4 --batch 2 --seq 512 --repeats 3

Each path runs in its own process (alternating), three timed steps after two warm-up steps; the
packed path is forced by building the segments without ``every_pair``, so both compute the same
loss (printed). A diagnosis of the layer's two readings, not a model benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(path: str, layers: int, batch: int, seq: int, threads: int) -> dict:
    import torch

    from mossnet import MossNetConfig, MossNetForCausalLM
    from mossnet.layers import expert_segments

    torch.set_num_threads(threads)
    if path == "packed":
        build = expert_segments.ExpertSegments.build.__func__
        expert_segments.ExpertSegments.build = classmethod(
            lambda cls, rows, layout, n, every_pair=False: build(cls, rows, layout, n, False))
    torch.manual_seed(0)
    config = MossNetConfig.from_preset("tiny", d_model=576, n_layers=layers, ssm_experts=9, ssm_top_k=9,
                                       state_update="all", ssm_head_dim=64, ssm_state_dim=64, vocab_size=2048)
    model = MossNetForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    seconds = []
    for step in range(5):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if step >= 2:
            seconds.append(time.perf_counter() - start)
    return {"path": path, "seconds": seconds, "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.layers, args.batch, args.seq, args.threads)))
        return
    shape = ["--layers", str(args.layers), "--batch", str(args.batch), "--seq", str(args.seq),
             "--threads", str(args.threads)]
    for _ in range(args.repeats):
        for path in ("packed", "uniform"):
            out = subprocess.run([sys.executable, __file__, "--child", path, *shape], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            print(f"{path:8s} " + " ".join(f"{s:.3f}s" for s in row["seconds"]) + f"  loss {row['loss']:.6f}",
                  flush=True)


if __name__ == "__main__":
    main()
