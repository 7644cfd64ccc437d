"""Which study model, and which Triton scan candidate, faults on this card.

A fault inside the scan (an illegal memory access) poisons the CUDA context, and under MPS every
process on the card, so a study that faults says nothing about which run or which kernel config
did it. This script asks in isolation, one child process per question:

1. each decomposition variant (``mossnet.studies.decomposition``) at the GPU sitting's shape, with
   the scan's autotuning on, through the trainer's captured step as the study runs it: two eager
   bf16 steps on a side stream (where the scan is tuned), the capture, replays; ``--repeats``
   times each, since the fault seen on 2026-12-07 struck one run in nine;
2. for each variant that faults, every (kernel, candidate) alone (``MOSSNET_TRITON_AUTOTUNE=0``
   and that kernel's candidate list cut to the one config, the other kernels on their first),
   with ``CUDA_LAUNCH_BLOCKING=1`` so the fault is raised by the launch that made it.

    python benchmarks/diagnose_scan_configs.py --variants A,C,E --jobs 8 --json out.json
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python benchmarks/diagnose_scan_configs.py \
        --variants C --repeats 16 --jobs 8 --blocking        # as the studies run, fault located
    ... --variants C --repeats 2 --sanitizer /usr/local/cuda/bin/compute-sanitizer

Needs CUDA and Triton. Prints one line per question and a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

_CHILD = r"""
import sys, torch
from mossnet.models.mossnet import MossNetForCausalLM
from mossnet.studies.decomposition import GPU_MODEL, variant_config
from mossnet.studies.arch_configs import reference_config
from mossnet.ops.mosse.triton import function
from mossnet.train.cuda_graph_step import CapturedTrainStep

letter, kernel, idx, batch, seq, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if kernel != "-":
    k = function.STAGE_KERNELS[kernel]
    k.configs = [k.configs[idx]]
ref = reference_config("tiny", 8192, dict(GPU_MODEL))
cfg = variant_config(letter, ref)
model = MossNetForCausalLM(cfg).cuda().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

def loss_fn(ids, labels):
    with torch.autocast("cuda", torch.bfloat16):
        out = model(input_ids=ids, labels=labels)
    return out.loss, out.loss.detach(), None, {}

# The study's path: two eager steps on a side stream (where the scan is tuned), one capture, replays.
step = CapturedTrainStep(model, opt, loss_fn, grad_clip=1.0)
for _ in range(steps):
    ids = torch.randint(0, cfg.vocab_size, (1, batch, seq))
    stats, _ = step(ids, ids)
torch.cuda.synchronize()
print("OK", float(stats[0]))
"""


def ask(letter: str, kernel: str, idx: int, args) -> dict:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    if kernel != "-":
        env["MOSSNET_TRITON_AUTOTUNE"] = "0"
    steps = args.steps
    if kernel != "-" or args.blocking:  # the fault is raised by the launch that made it
        env["CUDA_LAUNCH_BLOCKING"] = "1"
        steps = min(steps, 2)  # the eager steps only: a blocking launch has no place in a capture
    cmd = [sys.executable, "-c", _CHILD, letter, kernel, str(idx), str(args.batch), str(args.seq), str(steps)]
    if args.sanitizer:
        cmd = [args.sanitizer, "--tool", "memcheck", "--print-limit", "5"] + cmd
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        out = (r.stdout + r.stderr).strip().splitlines()
        ok = r.returncode == 0 and "ERROR SUMMARY: 0 errors" in "\n".join(out) if args.sanitizer else r.returncode == 0
        tail = [ln for ln in out if "Error" in ln or "error" in ln or "File " in ln][-6:] or out[-3:]
    except subprocess.TimeoutExpired:
        ok, tail = False, ["timed out"]
    return {"variant": letter, "kernel": kernel, "candidate": idx, "ok": ok,
            "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


def candidates() -> list[tuple[str, int]]:
    """(kernel, index) of every declared tuning candidate of the scan (imports Triton)."""
    from mossnet.ops.mosse.triton import function

    return [(name, i) for name, k in function.STAGE_KERNELS.items() for i in range(len(k.configs))]


def declared_configs() -> dict[str, list[str]]:
    from mossnet.ops.mosse.triton import function

    return {name: [str(c) for c in k.configs] for name, k in function.STAGE_KERNELS.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="A,B,C,D,E,F,G,H")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="training steps per question: 2 eager, then captured")
    p.add_argument("--repeats", type=int, default=1, help="ask each variant this many times (the fault is intermittent)")
    p.add_argument("--blocking", action="store_true",
                   help="CUDA_LAUNCH_BLOCKING=1 in stage 1 as well (then only the two eager steps run)")
    p.add_argument("--sanitizer", default=None, metavar="PATH",
                   help="run each question under compute-sanitizer's memcheck (PATH to the binary; slow)")
    p.add_argument("--timeout", type=int, default=180)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    def run_all(questions):
        with ThreadPoolExecutor(args.jobs) as pool:
            found = list(pool.map(lambda q: ask(*q, args), questions))
        for r in found:
            what = "autotuned" if r["kernel"] == "-" else f"{r['kernel']}[{r['candidate']}]"
            print(f"{r['variant']} {what}: {'ok' if r['ok'] else 'FAULT'} ({r['seconds']} s)"
                  + ("" if r["ok"] else " | " + " / ".join(r["tail"])), flush=True)
        return found

    def report(results, stage: str) -> dict:
        """The summary so far, printed and written after each stage (a call cut by its time
        limit still leaves stage 1's answer behind)."""
        faulty = list(dict.fromkeys(r["variant"] for r in results if not r["ok"] and r["kernel"] == "-"))
        summary = {"stage": stage, "variants": letters, "faulty_variants": faulty,
                   "faulty_candidates": sorted({f"{r['kernel']}[{r['candidate']}]" for r in results
                                                if r["kernel"] != "-" and not r["ok"]}),
                   "configs": declared_configs(), "results": results}
        print(json.dumps({k: summary[k] for k in ("stage", "faulty_variants", "faulty_candidates")}), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
        return summary

    letters = args.variants.split(",")
    results = run_all([(v, "-", 0) for v in letters for _ in range(args.repeats)])
    faulty = report(results, "variants")["faulty_variants"]
    if faulty:
        results += run_all([(v, name, i) for v in faulty for name, i in candidates()])
        report(results, "candidates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
