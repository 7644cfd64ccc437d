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
timeout "${PYTEST_TIMEOUT:-300}" python3 -m pytest tests/ops $xdist -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_ops.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
echo "pytest tests/ops: rc=$rc" | tee -a "$OUT/summary.txt"

# --- MoSSE scan benchmark: triton vs chunked (vs fla if importable) -------------------------
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_scan.py --out "$OUT/bench_scan.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_scan.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
echo "bench_scan: rc=$rc" | tee -a "$OUT/summary.txt"

# --- the rest of the test suite (CPU tests and the model-level GPU tests) -------------------
# tests/models/test_cuda_graph_decode.py: graph-replayed decode == eager decode (raw step and
# generate), interleaved caches, recapture, and no host sync in the training / prefill / decode step.
timeout "${PYTEST_ALL_TIMEOUT:-900}" python3 -m pytest tests --ignore=tests/ops -q $xdist -p no:cacheprovider -rfEs 2>&1 | tee "$OUT/pytest_all.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
echo "pytest tests (all but ops): rc=$rc" | tee -a "$OUT/summary.txt"

# --- model-level benchmark: MossNet base/small vs Llama-135M vs single-head SSM ------------
# One child process per job (a device fault in one job cannot take the others down); prints a
# table last and writes every number to bench_model.json. BENCHMARKS.md shows a full run.
timeout "${BENCH_MODEL_TIMEOUT:-900}" python3 benchmarks/bench_model.py --out "$OUT/bench_model.json" \
  --time-budget "${BENCH_MODEL_EXTRAS_AFTER:-600}" ${BENCH_MODEL_ARGS:-} 2>&1 | tee "$OUT/bench_model.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
echo "bench_model: rc=$rc" | tee -a "$OUT/summary.txt"

exit $status
