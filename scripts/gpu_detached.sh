#!/usr/bin/env bash
# A GPU study that outlives one device call: the lent machine allows 10 minutes a command and
# kills what a command leaves running, except a process in its own session, which runs until the
# machine goes back (30 s after the last call ends). So a study of 25 minutes runs detached, and
# the calls that follow it only wait and bring its results back; an MQAR run is never cut at a
# call boundary and started over.
# On 2026-12-07 a study launched with plain setsid (`setsid nohup ... &`) did not survive the call
# boundary, while the CUDA MPS daemon (a real daemon: double fork, every descriptor closed) did.
# So the launch now daemonises fully (see daemonize): its own session, parent init, no descriptor
# but stdin (/dev/null) and driver.log. heartbeat.log gets "alive at HH:MM:SS" (UTC) every 30 s
# while the driver lives, so it shows when a study stopped; a driver stopped by SIGTERM, SIGHUP or
# SIGINT says so in driver.log ("driver: got SIGTERM at ..."), and an ending by itself too.
#
#   call 1:  OUT=$OUT scripts/gpu_detached.sh start mqar_rank [WAIT]   # launch, then wait WAIT s (default 540)
#   call 2+: OUT=$OUT scripts/gpu_detached.sh wait mqar_rank [WAIT]    # wait, bring results back
# MPS=1 starts CUDA's multi-process service first (see start_mps).
# STUDY may list several, comma-separated (mqar_rank,decomposition): they run one after the other,
# so the card is never idle between them, and each one's results come back as <study>.tgz.
#
# Chain the calls at once (an idle machine goes back after 30 s, and the study with it). The
# study runs from a copy of the tree taken at start (a call re-sends the working tree, and the
# study's runs import mossnet afresh), with gpu_studies.sh's environment (DATA, RANK_JOBS, ...)
# passed through, its directories under /tmp/detached. Every 60 s and at the end, $OUT gets the
# study's text results so far (<study>.tgz, for gpu_studies.sh's RESTORE=) and its logs
# (driver.log, heartbeat.log, the runs' logs): a call cut at its limit still brings back what $OUT
# holds.
set -uo pipefail
cd "$(dirname "$0")/.."
action="${1:?usage: gpu_detached.sh start|wait STUDY [WAIT_SECONDS]}" study="${2:?study name}" wait_s="${3:-540}"
OUT="${OUT:?set OUT}" ROOT=/tmp/detached
mkdir -p "$OUT"

bring_back() {  # gpu_studies.sh's own packing of each study, then the logs
  local one
  for one in ${study//,/ }; do OUT="$OUT" STUDIES="$ROOT/studies" bash scripts/gpu_studies.sh --pack "$one"; done
  cp "$ROOT"/out/*.log "$ROOT/driver.log" "$ROOT/heartbeat.log" "$OUT"/ 2>/dev/null
  return 0
}

# A zombie counts as ended: an orphan's new parent (init, or a container's PID 1) may be slow to
# reap it, or never do so.
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"; }
running() { [ -f "$ROOT/pid" ] && alive "$(cat "$ROOT/pid")"; }

# daemonize PIDFILE LOG DIR CMD...: start CMD as a daemon and return at once, its PID in PIDFILE.
# python3 is the intermediate process of a double fork: it starts CMD in a new session (no
# controlling terminal), with stdin /dev/null, stdout and stderr appended to LOG, no other
# descriptor, in DIR, with this environment, and exits without waiting, so CMD's parent is init.
daemonize() {
  python3 -c '
import os, subprocess, sys
pidfile, log, cwd, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(log, "ab") as out:
    proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, close_fds=True, cwd=cwd, env=dict(os.environ))
with open(pidfile, "w") as f:
    f.write(f"{proc.pid}\n")
os._exit(0)  # no wait for CMD, not even at interpreter exit
' "$@"
}

# The study driver (bash -c DRIVER driver ROOT STUDY), run by daemonize: the heartbeat loop, then
# gpu_studies.sh in the background, so that a trapped signal interrupts `wait` at once instead of
# waiting for the study's end. On a signal it writes the line, then stops its whole process group
# (the heartbeat, gpu_studies.sh, `mossnet compare` and its runs) with SIGTERM, not the signal it
# got: a background command of a non-interactive shell ignores SIGINT.
# shellcheck disable=SC2016  # expanded by the driver's bash, not here
DRIVER='
root=$1 study=$2
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs "^State:[[:space:]]*Z" "/proc/$1/status"; }
on_signal() {
  echo "driver: got SIG$1 at $(date -u +%T)"
  trap "" TERM HUP INT
  kill -TERM 0
  exit $((128 + $(kill -l "$1")))
}
for sig in TERM HUP INT; do trap "on_signal $sig" "$sig"; done
driver=$$
(while alive "$driver"; do echo "alive at $(date -u +%T)" >> "$root/heartbeat.log"; sleep 30; done) &
bash scripts/gpu_studies.sh "$study" &
wait $!
status=$?
echo "driver: gpu_studies.sh ended (exit $status) at $(date -u +%T)"
exit "$status"
'

# MPS=1: the study's runs share the card through CUDA's multi-process service. Without it the
# GPU time-slices between processes, one context at a time, and the small kernels of a dozen
# small models leave most of the card idle in each slice; with it their kernels run side by
# side. A daemon that does not answer a first CUDA call is stopped again, and the runs go on
# without it. `echo quit | nvidia-cuda-mps-control` stops it (before any timing).
start_mps() {
  command -v nvidia-cuda-mps-control > /dev/null || { echo "MPS: nvidia-cuda-mps-control not found; runs time-slice"; return; }
  setsid nvidia-cuda-mps-control -d || { echo "MPS: the daemon did not start; runs time-slice"; return; }
  if timeout 60 python3 -c "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then
    echo "MPS: on"
  else
    echo quit | nvidia-cuda-mps-control; echo "MPS: a first CUDA call failed under it; stopped, runs time-slice"
  fi
}

case "$action" in
  start)
    if running; then echo "a detached study is already running (pid $(cat "$ROOT/pid"))"; exit 2; fi
    rm -rf "$ROOT"; mkdir -p "$ROOT/out" "$ROOT/studies"
    if [ "${MPS:-0}" = 1 ]; then start_mps; fi
    mkdir -p "$ROOT/repo"  # the tree and the carried data, not virtual environments or old study runs
    tar --exclude=./.git --exclude=./.venv --exclude=./.venv-min --exclude=./out/studies --exclude=./runs -cf - . \
      | tar -xf - -C "$ROOT/repo"
    OUT="$ROOT/out" STUDIES="$ROOT/studies" STUDY_TIMEOUT="${STUDY_TIMEOUT:-3600}" \
      daemonize "$ROOT/pid" "$ROOT/driver.log" "$ROOT/repo" bash -c "$DRIVER" driver "$ROOT" "$study" \
      || { echo "the study driver did not start"; exit 2; }
    sleep 1
    echo "started $study detached (pid $(cat "$ROOT/pid")), under $ROOT" ;;
  wait) running || echo "no detached study is running (finished, or the machine is fresh)" ;;
  *) echo "unknown action $action (start, wait)"; exit 2 ;;
esac

end=$(( $(date +%s) + wait_s ))
while running && (( $(date +%s) < end )); do
  sleep $(( end - $(date +%s) < 60 ? end - $(date +%s) : 60 ))
  bring_back
done
bring_back
for one in ${study//,/ }; do
  echo "--- $one: $(ls "$ROOT/studies/$one"/runs/*/result.json 2>/dev/null | wc -l) runs recorded of" \
       "$(ls -d "$ROOT/studies/$one"/runs/* 2>/dev/null | wc -l) started; $(running && echo running || echo stopped)"
done
tail -n 5 "$ROOT/driver.log" 2>/dev/null
tail -n 1 "$ROOT/heartbeat.log" 2>/dev/null
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
exit 0
