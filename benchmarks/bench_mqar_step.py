"""CPU cost of the MQAR gate's training step, the two parts that made the first GPU sitting
CPU-bound: drawing a batch of Zoology's mixture (distinct keys and values by a full argsort of
each row, against ``topk``), and one training step's loss and backward with the logits of every
position against the logits of the queried positions only (``mossnet.studies.mqar.query_logits``).

    taskset -c 0,1 python benchmarks/bench_mqar_step.py --repeats 3

The gate's first run: Zoology's attention (2 layers, d 64, vocabulary 8,192), batch 256, rows of
256 tokens. Both losses are printed (dropout makes them differ slightly from run to run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def seconds(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from mossnet.studies import mqar, mqar_data
    from mossnet.studies.mqar_calibration import MQARSchedule, gate_specs

    torch.set_num_threads(args.threads)
    spec = gate_specs("/tmp/unused", MQARSchedule(device="cpu"), lrs=(3e-3,), rungs=("zoology",))[0]
    slices = mqar.train_slices(spec)

    def draw_sorted():  # the earlier draw: a full argsort of each row
        real = mqar_data._first_of_permutation
        mqar_data._first_of_permutation = lambda b, w, n, g: torch.rand(b, w, generator=g).argsort(dim=1)[:, :n]
        try:
            mqar_data.make_mqar_mixture(spec.batch_size, slices, 0, spec.vocab_size)
        finally:
            mqar_data._first_of_permutation = real

    def draw_topk():
        mqar_data.make_mqar_mixture(spec.batch_size, slices, 0, spec.vocab_size)

    config, cls, _ = mqar.build_model(spec)
    torch.manual_seed(0)
    model = cls(config)
    x, y = mqar.training_batch(spec, 0)
    losses = {}

    def full_step():
        model.zero_grad()
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=mqar_data.IGNORE_INDEX)
        loss.backward()
        losses["full"] = float(loss.detach())

    def query_step():
        model.zero_grad()
        logits, labels, _ = mqar.query_logits(model, x, y, mqar.max_queries(spec))
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=mqar_data.IGNORE_INDEX)
        loss.backward()
        losses["query"] = float(loss.detach())

    result = {"threads": args.threads, "batch": spec.batch_size, "vocab": spec.vocab_size}
    for name, fn in (("draw_sorted", draw_sorted), ("draw_topk", draw_topk),
                     ("step_full_logits", full_step), ("step_query_logits", query_step)):
        runs = seconds(fn, args.repeats)
        result[name] = {"median_s": statistics.median(runs), "runs_s": runs}
        print(f"{name}: {statistics.median(runs) * 1e3:.0f} ms (runs {', '.join(f'{r * 1e3:.0f}' for r in runs)})",
              flush=True)
    result["losses"] = losses
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
