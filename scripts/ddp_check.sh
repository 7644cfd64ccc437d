#!/usr/bin/env bash
# Several-GPU check of `mossnet train`, one device call on a 2-GPU machine:
#   1 GPU with --grad-accum 2   (the reference: same global batch as the runs below)
#   torchrun 2 GPUs, DDP        (must follow the reference's losses; ~2x its tokens/s)
#   torchrun 2 GPUs, FSDP2      (same)
# then prints losses side by side and the throughput of each run (summary.json under $OUT).
#   DATA=path/to/prepared OUT=/tmp/ddp scripts/ddp_check.sh      # PRESET=small STEPS=60 optional
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/ddp_check}"
DATA="${DATA:?set DATA to a directory written by mossnet prepare-data}"
PRESET="${PRESET:-small}" STEPS="${STEPS:-60}" BATCH="${BATCH:-8}" SEQ="${SEQ:-2048}"
NPROC="${NPROC:-2}"
mkdir -p "$OUT"
# NVLink multicast stays off on shared hosts (see the device notes); harmless elsewhere.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
status=0
{
  date -u
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"
} 2>&1 | tee "$OUT/env.txt"

common=(train --preset "$PRESET" --data "$DATA" --max-steps "$STEPS" --batch-size "$BATCH" --seq-len "$SEQ"
        --log-interval 5 --eval-interval 0 --eval-tokens 65536 --ckpt-interval 100000 --no-progress
        --no-tensorboard --seed 0 warmup_steps=10)

run() {  # run NAME CMD...
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$OUT/commands.txt"
  timeout "${RUN_TIMEOUT:-240}" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  echo "$name: rc=$rc" | tee -a "$OUT/summary.txt"
}

run single python3 -m mossnet.cli.main "${common[@]}" --grad-accum "$NPROC" --out "$OUT/single"
run ddp torchrun --standalone --nproc_per_node "$NPROC" -m mossnet.cli.main "${common[@]}" --out "$OUT/ddp"
run fsdp torchrun --standalone --nproc_per_node "$NPROC" -m mossnet.cli.main "${common[@]}" --fsdp --out "$OUT/fsdp"

python3 - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {}
for name in ("single", "ddp", "fsdp"):
    path = out / name / "metrics.jsonl"
    if not path.exists():
        print(f"{name}: no metrics"); continue
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    steady = [r["tokens_per_s"] for r in train[2:]] or [r["tokens_per_s"] for r in train]
    runs[name] = {"loss": {r["step"]: r["loss"] for r in train},
                  "tokens_per_s": sum(steady) / max(len(steady), 1),
                  "val_loss": val[-1]["loss"] if val else None}
steps = sorted(set().union(*(r["loss"] for r in runs.values()))) if runs else []
print("step  " + "  ".join(f"{n:>10}" for n in runs))
for s in steps:
    print(f"{s:>4}  " + "  ".join(f"{r['loss'].get(s, float('nan')):>10.4f}" for r in runs.values()))
for n, r in runs.items():
    print(f"{n:>6}: {r['tokens_per_s']:>10,.0f} tokens/s (steady windows), final val loss {r['val_loss']}")
if "single" in runs:
    base = runs["single"]["tokens_per_s"]
    for n in ("ddp", "fsdp"):
        if n in runs:
            diffs = [abs(runs[n]["loss"][s] - runs["single"]["loss"][s]) for s in runs[n]["loss"] if s in runs["single"]["loss"]]
            print(f"{n}: {runs[n]['tokens_per_s'] / base:.2f}x the single-GPU tokens/s; "
                  f"max |loss - single| over logged steps = {max(diffs) if diffs else float('nan'):.4f}")
(out / "summary.json").write_text(json.dumps(runs, indent=1))
EOF
exit $status
