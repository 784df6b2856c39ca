#!/usr/bin/env bash
# Start (or resume) the reader's training job in the background, under nice (10: it still gets a
# share beside foreground work; nice 19 starves it), with jemalloc when
# available. Checkpoints, log and PID live in the job folder outside the repository
# (~/.cache/appliance/train/reader, or $APPLIANCE_TRAIN_DIR/reader). Extra arguments go to
# `python -m build_tools train-reader`. Pause with kill -STOP "$(cat JOB/pid)", resume with -CONT; stop with kill -TERM (it checkpoints first).
set -euo pipefail
cd "$(dirname "$0")/.."
JOB=${APPLIANCE_TRAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance/train}/reader
mkdir -p "$JOB"
if [ -f "$JOB/pid" ] && grep -qs train-reader "/proc/$(cat "$JOB/pid")/cmdline"; then
    echo "already running: PID $(cat "$JOB/pid"), log $JOB/train.log"; exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q libjemalloc.so.2; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null || true
fi
JEMALLOC=$(ldconfig -p | awk '/libjemalloc.so.2 / {print $NF; exit}')
.venv/bin/python -c "import torch, transformers" 2>/dev/null || .venv/bin/python -m pip install --quiet -e ".[build]"
# jemalloc's default decay hands freed pages back at once; with batches of varying length that
# turns into page faults (a third of the CPU time went to the kernel): keep them for a minute.
MALLOC_CONF=${MALLOC_CONF:-background_thread:true,dirty_decay_ms:60000,muzzy_decay_ms:60000} \
LD_PRELOAD=${JEMALLOC:-} nohup nice -n "${NICE:-10}" .venv/bin/python -m build_tools train-reader --out "$JOB" "$@" \
    >>"$JOB/train.log" 2>&1 &
echo $! >"$JOB/pid"
echo "started: PID $!, log $JOB/train.log"
