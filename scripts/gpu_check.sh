#!/usr/bin/env bash
# GPU check, one device call: environment, the op tests on CUDA, the MoSSE scan benchmark.
# Run from anywhere on the GPU machine; results (logs, JSON) go under $OUT (default out/gpu_check).
#   OUT=/tmp/x scripts/gpu_check.sh            # PYTEST_WORKERS=8, BENCH_ARGS="--shapes ..." optional
# Sections append below: keep each one independent and writing under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

# --- environment --------------------------------------------------------------------------
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

# --- op tests on CUDA (MoSSE scan: Triton vs reference, fwd + every gradient) --------------
xdist=""
if python3 -c "import xdist" 2>/dev/null; then xdist="-n ${PYTEST_WORKERS:-8}"; fi
timeout "${PYTEST_TIMEOUT:-300}" python3 -m pytest tests/ops -q $xdist -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_ops.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
echo "pytest tests/ops: rc=$rc" | tee -a "$OUT/summary.txt"

# --- MoSSE scan benchmark: triton vs chunked (vs fla if importable) -------------------------
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_scan.py --out "$OUT/bench_scan.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_scan.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
echo "bench_scan: rc=$rc" | tee -a "$OUT/summary.txt"

exit $status
