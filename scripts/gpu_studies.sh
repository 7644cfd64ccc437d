#!/usr/bin/env bash
# The GPU studies of RESULTS.md, one lent GPU, one device call at a time (each call <= 10 minutes;
# every study resumes: recorded runs are skipped, and an interrupted LM or MQAR run continues from
# its last checkpoint or resume point (an MQAR run saves one at each accuracy-curve point, every
# 300 of 6,000 steps) while the machine stays warm; $STUDIES lives on the machine between calls).
#
# The two sittings of the decomposition / calibration plan (RESULTS.md, "Decomposition study
# (planned)" and "MQAR calibration (planned)"):
#   DATA=path/to/prepared OUT=/tmp/x scripts/gpu_studies.sh decomposition   # ~25 GPU-minutes, 3+ calls
#   OUT=/tmp/x scripts/gpu_studies.sh mqar_calibration                      # ~25-30 GPU-minutes, 3+ calls
# decomposition: variants A-H (mossnet/studies/decomposition.py) at ~6M active parameters, 10M
#   tokens each (1,220 steps of 8 x 1,024), lr 3e-3 plus DEC_SWEEP (1e-3,1e-2) for A, C, E on
#   seed 0, then all variants on 3 seeds at their inherited rate; probes on 65,536 val tokens.
# mqar_calibration: the attention gate (mqar_gate: Zoology's attention and the ladder toward our
#   Llama, d=64, lr 3e-4,1e-3,3e-3, <= 4,000 steps of 256 on Zoology's mixture, stops at 0.99 on
#   128x8; GATE_STEPS raises the cap: Zoology trains ~45,000); if Zoology's attention fails there,
#   mqar_gate_long (Zoology's rung and RMSNorm at lr 1e-2, the top of Zoology's own sweep, <= 4,000
#   steps: LONG_RUNGS, LONG_LRS, LONG_STEPS; both passed on 2026-12-06); then, only if Zoology's
#   attention passes (MQAR_FORCE_RANK=1 overrides), the ranking
#   (mqar_rank: single head, dense 2 heads, MossNet without MLP at 2 matched state sizes, lr
#   3e-3,1e-2 on seed 0, seeds 1-2 at the best; 6,000 steps of 256; RANK_ARCHS picks the models).
# The fixed baselines (issue 20 item 1: Llama with the 8/3 MLP, Mamba-2 at initializer_range 0.02, both swept),
# beside MossNet and the single head on the same seeds, in a new directory so no old run is skipped:
#   DATA=... OUT=... STUDIES=out/studies_fixed scripts/gpu_studies.sh baselines   # lm and lm_mamba2 at once,
# then one report over both (baselines.md / .json / .tgz: paired per-seed differences across the two studies)
# A fresh machine (a later session) picks up where an earlier one stopped: RESTORE=<dir> unpacks
# <dir>/<study>.tgz (what an earlier call brought back) before the study runs, so its recorded runs
# are skipped; a run cut short starts over there (checkpoints and resume points never come back).
# `scripts/gpu_studies.sh --pack STUDY` only packs what STUDY has recorded so far.
# Each sitting writes compact JSON under $OUT: <study>.json (settings + every run's result, no
# weights), <study>.md (the report), <study>.png, the log, and <study>.tgz (the study's text files).
#
# Earlier studies (superseded; kept to reproduce RESULTS.md's history):
#   DATA=... OUT=... scripts/gpu_studies.sh lm,lm_mamba2,ablations   # baselines and ablations
#   OUT=... scripts/gpu_studies.sh mqar                               # the first MQAR grid
# lm: LM_ARCHS at lr 3e-3 on 2 seeds plus LM_SWEEP (1e-3,1e-2) on seed 0, --cuda-graph. lm_mamba2:
# transformers' Mamba-2 (kernel-less, eager, slow), now also swept, in $STUDIES/lm_mamba2 (merge its
# runs into lm/runs for one report). mqar: MQAR_* pick the grid (docs/STUDIES.md).
# DATA: `mossnet prepare-data --out DIR --corpus all --vocab-size 8192` (5.0M training tokens).
# Study directories go under $STUDIES (default out/studies). Several runs share the GPU at once
# (--jobs): the models are small and launch-bound, so their tokens/s are not benchmarks. A call
# stops its studies at $STUDY_TIMEOUT seconds (default 540) in all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_studies}" STUDIES="${STUDIES:-out/studies}"
mkdir -p "$OUT" "$STUDIES"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# MQAR runs compute logits at the queried positions only (mossnet.studies.mqar.query_logits): with the
# full 256 x 256 x 8,192 logits a run held ~10 GB and nine ran an 80 GB card out of memory.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
DEADLINE=$(( $(date +%s) + ${STUDY_TIMEOUT:-540} ))
# ~5M active parameters (spec-shaped: E=4 SSM experts of top-2, P=64, N=32, 4 MLP experts).
MODEL=(d_model=256 n_layers=6 ssm_head_dim=64 ssm_state_dim=32)
LM=(--data "${DATA:-}" --budget-tokens "${BUDGET:-10000000}" --batch-size 32 --seq-len 256 --lr 3e-3
    --eval-points 6 --eval-tokens 65536 --model "${MODEL[@]}")

args_of() {  # the `mossnet compare` arguments of one study
  case "$1" in
    decomposition) echo --study decomposition --archs "${DEC_VARIANTS:-A,B,C,D,E,F,G,H}" --seeds 3 \
        --lr 3e-3 --lr-sweep "${DEC_SWEEP:-1e-3,1e-2}" --data "${DATA:-}" --budget-tokens "${BUDGET:-10000000}" \
        --batch-size 8 --seq-len 1024 --eval-points 6 --eval-tokens 65536 --probe-tokens 65536 \
        --jobs "${DEC_JOBS:-10}" --cuda-graph --model "${MODEL[@]}" ;;
    mqar_gate) echo --study mqar_gate --widths 64 --seeds "${GATE_SEEDS:-1}" --mqar-steps "${GATE_STEPS:-4000}" \
        --jobs "${GATE_JOBS:-9}" ;;
    mqar_gate_long) echo --study mqar_gate --widths 64 --seeds 1 --archs "${LONG_RUNGS:-zoology,rmsnorm}" \
        --lrs "${LONG_LRS:-1e-2}" --mqar-steps "${LONG_STEPS:-4000}" --jobs "${GATE_JOBS:-9}" ;;
    mqar_rank) echo --study mqar_rank ${RANK_ARCHS:+--archs "$RANK_ARCHS"} --widths "${RANK_WIDTH:-64}" --state-dims "${RANK_STATES:-16,64}" \
        --seeds 3 --mqar-steps "${RANK_STEPS:-6000}" --jobs "${RANK_JOBS:-9}" --cuda-graph ;;
    lm) echo --study lm --archs "${LM_ARCHS:-mossnet,single_head,single_head_moe,llama}" --seeds 2 \
        --lr-sweep "${LM_SWEEP:-1e-3,1e-2}" --sweep-seeds 1 --jobs "${LM_JOBS:-4}" --cuda-graph "${LM[@]}" ;;
    lm_mamba2) echo --study lm --archs mamba2 --seeds 2 --lr-sweep "${LM_SWEEP:-1e-3,1e-2}" --sweep-seeds 1 \
        --jobs "${M2_JOBS:-3}" --threads "${M2_THREADS:-0}" "${LM[@]}" ;;  # eager (not capturable), its own directory
    ablations) echo --study ablations --seeds 1 --jobs "${ABL_JOBS:-3}" "${LM[@]}" ;;
    mqar) echo --study mqar --archs "${MQAR_ARCHS:-mossnet,single_head,llama}" --widths "${MQAR_WIDTHS:-64,128}" \
        --pairs "${MQAR_PAIRS:-8,16}" --lrs "${MQAR_LRS:-1e-3,3e-3,1e-2}" --mqar-seq-len 128 --mqar-vocab 256 \
        --mqar-generator uniform --mqar-steps "${MQAR_STEPS:-2000}" --mqar-batch-size 512 --mqar-warmup 100 \
        --mqar-eval-points 10 --seeds "${MQAR_SEEDS:-1}" --jobs "${MQAR_JOBS:-8}" --cuda-graph ;;
    *) return 1 ;;
  esac
}

run_study() {  # run one study until the call's deadline, then pack its results into $OUT
  local study="$1" left
  local -a args
  read -r -a args <<< "$(args_of "$study")" || { echo "unknown study $study"; return 2; }
  left=$(( DEADLINE - $(date +%s) ))
  (( left > 30 )) || { echo "no time left for $study in this call"; return 1; }
  if [ -n "${RESTORE:-}" ] && [ -f "$RESTORE/$study.tgz" ] && [ ! -d "$STUDIES/$study/runs" ]; then
    tar xzf "$RESTORE/$study.tgz" -C "$STUDIES" && echo "restored the recorded runs of $RESTORE/$study.tgz"
  fi
  echo "mossnet compare ${args[*]} --out $STUDIES/$study" | tee -a "$OUT/commands.txt"
  # A run that fails is tried again in a fresh process while the call has time (RETRIES, default 2):
  # on 2026-12-07 one of nine decomposition runs died of an illegal memory access in its first
  # eager step, which its eight twins with the same shapes did not (docs/GPU_NOTES.md). Recorded
  # runs are skipped, so a retry costs only the failed runs. Its log is kept as <study>.log.<n>.
  local rc attempt=0
  while :; do
    timeout "$left" python3 -m mossnet.cli.main compare "${args[@]}" --out "$STUDIES/$study" > "$OUT/$study.log" 2>&1
    rc=$?
    left=$(( DEADLINE - $(date +%s) ))
    (( rc != 0 && rc != 124 && attempt < ${RETRIES:-2} && left > 60 )) || break
    attempt=$(( attempt + 1 ))
    cp "$OUT/$study.log" "$OUT/$study.log.$attempt"
    echo "$study: exit $rc; trying the failed runs again ($attempt of ${RETRIES:-2})"
  done
  tail -n 25 "$OUT/$study.log"
  pack "$study"
  return $rc
}

pack() {  # results only (a run cut short leaves checkpoints of any name behind): text, JSON, plots
  local dir="$STUDIES/$1"
  [ -d "$dir" ] || return 0
  [ -f "$dir/summary.json" ] && cp "$dir/summary.json" "$OUT/$1.json"
  [ -f "$dir/results.md" ] && cp "$dir/results.md" "$OUT/$1.md"
  for png in "$dir"/*.png; do [ -f "$png" ] && cp "$png" "$OUT/$1.png"; done
  # Written aside, then renamed: a call cut at its limit brings back the last whole archive.
  (cd "$STUDIES" && find "$1" -type f -not -path '*trainer_state*' -not -path '*/train/model/*' -not -path '*/resume/*' \
     -not -path '*.mossnet-tmp/*' \( -name '*.json' \
     -o -name '*.jsonl' -o -name '*.md' -o -name '*.txt' -o -name '*.png' -o -name '*.csv' -o -name '*.yaml' \) \
     -print0 | tar czf "$OUT/$1.tgz.part" --null -T - && mv "$OUT/$1.tgz.part" "$OUT/$1.tgz")
  return 0
}

joint_baselines_report() {  # one report over both studies' runs: paired differences across them
  local dir="$STUDIES/baselines"
  local -a args
  read -r -a args <<< "$(LM_ARCHS="${LM_ARCHS:-mossnet,single_head,llama},mamba2" args_of lm)"
  echo "mossnet compare ${args[*]} --out $dir --report-only" | tee -a "$OUT/commands.txt"
  # compare writes only into a directory it made: an empty report first, then the runs linked in
  rm -rf "$dir"
  python3 -m mossnet.cli.main compare "${args[@]}" --out "$dir" --report-only > "$OUT/baselines.log" 2>&1
  mkdir -p "$dir/runs"
  for study in lm lm_mamba2; do  # hard links: the runs' checkpoints are not copied
    [ -d "$STUDIES/$study/runs" ] && cp -al "$STUDIES/$study/runs/." "$dir/runs/"
  done
  python3 -m mossnet.cli.main compare "${args[@]}" --out "$dir" --report-only > "$OUT/baselines.log" 2>&1
  tail -n 30 "$OUT/baselines.log"
  pack baselines
}

if [ "${1:-}" = --pack ]; then  # only pack a study's results so far (scripts/gpu_detached.sh)
  pack "${2:?--pack STUDY}"
  exit 0
fi

for study in ${1//,/ }; do
  case "$study" in
    mqar_calibration)
      run_study mqar_gate
      python3 -m mossnet.studies.mqar_calibration "$STUDIES/mqar_gate" > "$OUT/mqar_gate_verdict.txt"
      verdict=$?
      cat "$OUT/mqar_gate_verdict.txt"
      if [ "$verdict" != 0 ]; then  # the gate's rule: raise the cap (and the rate) before a rung is read as blocking
        run_study mqar_gate_long
        python3 -m mossnet.studies.mqar_calibration "$STUDIES/mqar_gate_long" > "$OUT/mqar_gate_long_verdict.txt"
        verdict=$?
        cat "$OUT/mqar_gate_long_verdict.txt"
      fi
      if [ "$verdict" = 0 ] || [ "${MQAR_FORCE_RANK:-0}" = 1 ]; then
        run_study mqar_rank
      else
        echo "the gate has not passed (exit $verdict): mqar_rank not run (MQAR_FORCE_RANK=1 to run it anyway)"
      fi ;;
    baselines)  # issue 20 item 1: the fixed Llama and Mamba-2 beside MossNet and the single head,
      # both studies at once (Mamba-2 is eager and host-bound, the rest captured): 16 runs on 16 cores
      [ -n "${DATA:-}" ] || { echo "$study needs DATA=<prepared corpus>"; exit 2; }
      LM_ARCHS="${LM_ARCHS:-mossnet,single_head,llama}" LM_JOBS="${LM_JOBS:-12}" run_study lm &
      M2_JOBS="${M2_JOBS:-4}" M2_THREADS="${M2_THREADS:-1}" run_study lm_mamba2
      wait
      joint_baselines_report ;;
    decomposition|lm|lm_mamba2|ablations)
      [ -n "${DATA:-}" ] || { echo "$study needs DATA=<prepared corpus>"; exit 2; }
      run_study "$study" ;;
    mqar|mqar_gate|mqar_gate_long|mqar_rank) run_study "$study" ;;
    *) echo "unknown study $study (decomposition, mqar_calibration, baselines; earlier: lm, lm_mamba2, ablations, mqar)"
       exit 2 ;;
  esac
done
ls -la "$OUT"
