"""Which study model, and which Triton scan candidate, faults on this card.

A fault inside the scan (an illegal memory access) poisons the CUDA context, and under MPS every
process on the card, so a study that faults says nothing about which run or which kernel config
did it. This script asks in isolation, one child process per question:

1. each decomposition variant (``mossnet.studies.decomposition``) at the GPU sitting's shape, with
   the scan's autotuning on, as the study runs it: two bf16 training steps (forward + backward);
2. for each variant that faults, every (kernel, candidate) alone (``MOSSNET_TRITON_AUTOTUNE=0``
   and that kernel's candidate list cut to the one config, the other kernels on their first),
   with ``CUDA_LAUNCH_BLOCKING=1`` so the fault is raised by the launch that made it.

    python benchmarks/diagnose_scan_configs.py --variants A,C,E --jobs 8 --json out.json

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

letter, kernel, idx, batch, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if kernel != "-":
    k = function.STAGE_KERNELS[kernel]
    k.configs = [k.configs[idx]]
ref = reference_config("tiny", 8192, dict(GPU_MODEL))
cfg = variant_config(letter, ref)
torch.manual_seed(0)
model = MossNetForCausalLM(cfg).cuda()
ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")
for _ in range(2):
    with torch.autocast("cuda", torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
torch.cuda.synchronize()
print("OK", float(loss))
"""


def ask(letter: str, kernel: str, idx: int, batch: int, seq: int, timeout: int) -> dict:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    if kernel != "-":
        env.update(MOSSNET_TRITON_AUTOTUNE="0", CUDA_LAUNCH_BLOCKING="1")
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, letter, kernel, str(idx), str(batch), str(seq)],
                           env=env, capture_output=True, text=True, timeout=timeout)
        ok, tail = r.returncode == 0, (r.stdout + r.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        ok, tail = False, ["timed out"]
    return {"variant": letter, "kernel": kernel, "candidate": idx, "ok": ok,
            "seconds": round(time.perf_counter() - t0, 1), "tail": tail}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="A,B,C,D,E,F,G,H")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--timeout", type=int, default=180)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from mossnet.ops.mosse.triton import function  # the candidate lists (imports Triton)

    def run_all(questions):
        with ThreadPoolExecutor(args.jobs) as pool:
            found = list(pool.map(lambda q: ask(*q, args.batch, args.seq, args.timeout), questions))
        for r in found:
            what = "autotuned" if r["kernel"] == "-" else f"{r['kernel']}[{r['candidate']}]"
            print(f"{r['variant']} {what}: {'ok' if r['ok'] else 'FAULT'} ({r['seconds']} s)"
                  + ("" if r["ok"] else " | " + " / ".join(r["tail"])), flush=True)
        return found

    letters = args.variants.split(",")
    results = run_all([(v, "-", 0) for v in letters])
    faulty = [r["variant"] for r in results if not r["ok"]]
    candidates = [(name, i) for name, k in function.STAGE_KERNELS.items() for i in range(len(k.configs))]
    if faulty:
        results += run_all([(v, name, i) for v in faulty for name, i in candidates])
    summary = {"variants": letters, "faulty_variants": faulty,
               "faulty_candidates": sorted({f"{r['kernel']}[{r['candidate']}]" for r in results
                                            if r["kernel"] != "-" and not r["ok"]}),
               "configs": {name: [str(c) for c in k.configs] for name, k in function.STAGE_KERNELS.items()},
               "results": results}
    print(json.dumps({k: summary[k] for k in ("faulty_variants", "faulty_candidates")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
