#!/usr/bin/env bash
# Start (or resume) the reader's training job alone, in the background: `scripts/train.sh reader`
# (under nice, jemalloc when available; checkpoints, log and PID in ~/.cache/appliance/train/reader
# or $APPLIANCE_TRAIN_DIR/reader). Extra arguments go to `python -m build_tools train-reader`.
# scripts/train.sh without arguments runs the whole queue (reader, then retriever).
# Pause with kill -STOP "$(cat JOB/pid)", resume with -CONT; stop with kill -TERM (it checkpoints first).
exec "$(dirname "$0")/train.sh" reader "$@"
