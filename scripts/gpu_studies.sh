#!/usr/bin/env bash
# The GPU-scale comparison studies of RESULTS.md, as run on one lent GPU (one device call each):
#   DATA=path/to/prepared OUT=/tmp/x scripts/gpu_studies.sh lm,ablations   # ~10 GPU-minutes
#   OUT=/tmp/x scripts/gpu_studies.sh mqar                                   # 2+ calls, resumable
# mqar: 36 runs per seed (mossnet, single_head, llama x d 64,128 x 8,16 pairs x lr 1e-3,3e-3,1e-2),
# 2,000 steps of 512 examples each: attention has to escape a long plateau, so steps matter and a
# batch of 512 is nearly free on the GPU (docs/STUDIES.md). Attention needs lr 1e-3 (at 3e-3 and 1e-2
# it never left the plateau). MQAR_PAIRS=8,16,32 adds the 32-pair cells.
# lm: LM_ARCHS (default the four fast models) at lr 3e-3 on 2 seeds, plus LM_SWEEP (default
# 1e-3,1e-2) on seed 0: each model's best rate. lm_mamba2: transformers' Mamba-2 (kernel-less,
# slow) at lr 3e-3, 2 seeds, in $STUDIES/lm_mamba2 (merge its runs into lm/runs for the report).
# Every run but Mamba-2's replays its training step from a CUDA graph (--cuda-graph).
# DATA: `mossnet prepare-data --out DIR --corpus all --vocab-size 8192` (5.0M training tokens).
# Study directories go under $STUDIES (default out/studies); re-running skips finished runs.
# Several runs share the GPU at once (--jobs): the models are small and launch-bound, so one
# run alone leaves the card mostly idle. Their tokens/s are therefore not benchmarks.
# Each study stops at $STUDY_TIMEOUT seconds; the results of finished runs are kept, packed
# (without weights) into $OUT/<study>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_studies}" STUDIES="${STUDIES:-out/studies}"
mkdir -p "$OUT" "$STUDIES"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T="${STUDY_TIMEOUT:-520}"
# ~5M active parameters (spec-shaped: E=4 SSM experts of top-2, P=64, N=32, 4 MLP experts).
MODEL=(d_model=256 n_layers=6 ssm_head_dim=64 ssm_state_dim=32)
LM=(--data "${DATA:-}" --budget-tokens "${BUDGET:-10000000}" --batch-size 32 --seq-len 256 --lr 3e-3
    --eval-points 6 --eval-tokens 65536 --model "${MODEL[@]}")
pids=()
for study in ${1//,/ }; do
  case "$study" in
    lm) args=(--study lm --archs "${LM_ARCHS:-mossnet,single_head,moe_mamba,llama}" --seeds 2
              --lr-sweep "${LM_SWEEP:-1e-3,1e-2}" --sweep-seeds 1 --jobs "${LM_JOBS:-4}" --cuda-graph "${LM[@]}") ;;
    lm_mamba2) args=(--study lm --archs mamba2 --seeds 2 --jobs 2 "${LM[@]}") ;;  # eager, its own directory
    ablations) args=(--study ablations --seeds 1 --jobs "${ABL_JOBS:-3}" "${LM[@]}") ;;
    mqar) args=(--study mqar --archs "${MQAR_ARCHS:-mossnet,single_head,llama}" --widths "${MQAR_WIDTHS:-64,128}" --pairs "${MQAR_PAIRS:-8,16}"
                --lrs "${MQAR_LRS:-1e-3,3e-3,1e-2}" --mqar-seq-len 128 --mqar-vocab 256 --mqar-steps "${MQAR_STEPS:-2000}"
                --mqar-batch-size 512 --mqar-warmup 100 --mqar-eval-points 10 --seeds "${MQAR_SEEDS:-1}"
                --jobs "${MQAR_JOBS:-8}" --cuda-graph) ;;
    *) echo "unknown study $study (lm, lm_mamba2, ablations, mqar)"; exit 2 ;;
  esac
  echo "mossnet compare ${args[*]} --out $STUDIES/$study" | tee -a "$OUT/commands.txt"
  timeout "$T" python3 -m mossnet.cli.main compare "${args[@]}" --out "$STUDIES/$study" > "$OUT/$study.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for study in ${1//,/ }; do
  tail -n 25 "$OUT/$study.log"
  # results only (a run cut short leaves checkpoints of any name behind): text, JSON, plots
  (cd "$STUDIES" && find "$study" -type f -not -path '*trainer_state*' \( -name '*.json' -o -name '*.jsonl' \
     -o -name '*.md' -o -name '*.txt' -o -name '*.png' -o -name '*.csv' -o -name '*.yaml' \) -print0 \
     | tar czf "$OUT/$study.tgz" --null -T -)
done
ls -la "$OUT"
