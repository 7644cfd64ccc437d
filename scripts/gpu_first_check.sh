#!/usr/bin/env bash
# The first call of a GPU sitting (docs/GPU_NOTES.md, item 0): the CUDA tests of the code no card
# has run yet (not the slow ones), then, in this order, each only if LIMIT (seconds, default 540)
# leaves it room: the prefill against Llama and its kernel profile (they move with every change to
# the forward), the training comparison with Llama (eager and captured), the flaky decode-graph
# comparison in eight processes at once (benchmarks/diagnose_graph_decode.py, the fused kernels on),
# and the eager training step's kernel profile. Everything lands in $OUT as it finishes, in a
# handful of files (the device tool brings back only a few).
#   OUT=/tmp/x LIMIT=500 scripts/gpu_first_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s) LIMIT="${LIMIT:-540}" OUT="${OUT:?set OUT}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
at() { echo "$1 rc=$2 at $(( $(date +%s) - T0 )) s"; }
nvidia-smi -L
TESTS=(tests/ops/test_moe_ops.py tests/ops/test_moe_fused.py tests/ops/test_conv_silu.py tests/ops/test_dispatch_kernel.py
       tests/ops/test_routing.py tests/layers tests/models/test_generation.py tests/models/test_long_prompt.py
       tests/models/test_modeling.py tests/models/test_cuda_graph_decode.py)
l=$(left); timeout $(( l < 170 ? l : 170 )) python3 -m pytest -n 8 -p no:cacheprovider -m "not slow" "${TESTS[@]}" > "$OUT/tests.txt" 2>&1
at tests $?; grep -E "passed|failed" "$OUT/tests.txt" | tail -2; grep -E "^FAILED" "$OUT/tests.txt" | head -20
if (( $(left) > 60 )); then
  timeout 58 python3 benchmarks/bench_model.py --sections prefill --hard-budget 50 --out "$OUT/prefill.json" \
    > "$OUT/prefill.txt" 2>&1
  at prefill $?; grep -E "^\|" "$OUT/prefill.txt" | tail -6
fi
if (( $(left) > 75 )); then  # the prefill's kernels, and its wall time against them (host- or GPU-bound)
  timeout 35 python3 benchmarks/profile_train_step.py --model base --prefill --batch 1 --steps 5 \
    > "$OUT/profile_prefill.txt" 2>&1
  at profile-prefill $?; head -1 "$OUT/profile_prefill.txt"
fi
if (( $(left) > 140 )); then
  timeout 135 python3 benchmarks/bench_model.py --sections train --hard-budget 125 --out "$OUT/train.json" \
    --train-models mossnet-base,llama-135m,mossnet-base-graph,llama-135m-graph > "$OUT/train.txt" 2>&1
  at train $?; grep -E "^\|" "$OUT/train.txt" | tail -8
fi
if (( $(left) > 70 )); then
  # The decode-graph comparison that the fused decode step's race made fail now and then
  # (BENCHMARKS.md, "Fourth run"), repeated in 8 processes at once with the fused kernels, as the
  # test runs it; the race is fixed, so every process should print "0 of 12". Each prints how many
  # of its repeats differed.
  runs=$(mktemp -d)
  for i in $(seq 8); do
    PYTHONUNBUFFERED=1 timeout 65 python3 benchmarks/diagnose_graph_decode.py --condition default --repeats 12 \
      > "$runs/$i.txt" 2>&1 &
  done
  wait
  for i in $(seq 8); do echo "=== run $i"; cat "$runs/$i.txt"; done > "$OUT/flaky.txt"  # one file: few come back
  for i in $(seq 8); do echo "run $i: $(tail -n 1 "$runs/$i.txt")"; done
fi
if (( $(left) > 50 )); then
  timeout 48 python3 benchmarks/profile_train_step.py --model base > "$OUT/profile.txt" 2>&1
  at profile $?; head -3 "$OUT/profile.txt"; grep -A12 "by launches" "$OUT/profile.txt"
fi
echo "done at $(( $(date +%s) - T0 )) s"
