#!/usr/bin/env bash
# The training queue: one job at a time, in the order reader → student (student: the reader's
# distilled student, from the reader job's final model). Jobs that ran to their end and were
# measured and not shipped run only by name: reader-shared (each question over several passages
# with one softmax across them, build_tools/shared_norm.py), reader-headings (half the paragraphs
# read as "Title. context", the way the box reads "heading path. passage"), retriever and
# retriever-medquad (the retriever trained on MedQuAD's medical question → answer pairs alone), and
# reader-domains (the reader continued with reviews, Reddit, new Wikipedia and privacy policies
# beside its own data). Each job lives in its folder outside the repository
# (~/.cache/appliance/train/JOB, or $APPLIANCE_TRAIN_DIR/JOB) with its checkpoints, log (train.log)
# and PID; a job is finished when its folder holds final/.
#
#   scripts/train.sh              resume the first unfinished job in the background; when it
#                                 finishes, go on to the next (a job that is already running is
#                                 waited for first). Extra arguments per job: READER_ARGS="…",
#                                 RETRIEVER_ARGS="…", STUDENT_ARGS="…".
#   scripts/train.sh JOB [ARGS]   start or resume that job alone (reader | student | reader-shared |
#                                 reader-headings | reader-domains | retriever | retriever-medquad),
#                                 ARGS to its `python -m build_tools train-…` command.
#
# Jobs run under nice (10: they still get a share beside foreground work; nice 19 starves them),
# with jemalloc when available. Pause a job with kill -STOP "$(cat JOB/pid)", resume with -CONT;
# stop it with kill -TERM (it checkpoints first; the queue then stops too, and this script
# resumes it next time). The queue's own log and PID: $ROOT/queue.log, $ROOT/queue.pid.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
ROOT=${APPLIANCE_TRAIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance/train}
JOBS=(reader student)                            # the queue
BY_NAME=(reader-shared reader-headings reader-domains retriever retriever-medquad)  # measured, not shipped: only when asked for
mkdir -p "$ROOT"

# No pipe here ends its reader early (grep -q, awk's exit): under pipefail the writer's SIGPIPE
# would fail the pipeline at random, and set -e end the queue silently (seen under load).

names_job() {  # names_job PID DIR: the process's command line holds DIR as one of its arguments
    local args
    args=$(tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline") || return 1
    grep -qxF -- "$2" <<<"$args"
}

running() {  # running JOB: its PID file names a live process training into the job's folder
    [ -f "$ROOT/$1/pid" ] || return 1
    local pid
    pid=$(cat "$ROOT/$1/pid")
    # While a process execs (nohup → nice → python), its command line reads empty for a moment (a
    # job just started by `scripts/train.sh JOB`): look twice before taking a job for stopped.
    names_job "$pid" "$ROOT/$1" || { sleep 0.5; names_job "$pid" "$ROOT/$1"; }
}

setup() {  # jemalloc and the build extra, once (TRAIN_SETUP=0 skips this)
    [ "${TRAIN_SETUP:-1}" = 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep libjemalloc.so.2 >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null || true
    fi
    .venv/bin/python -c "import torch, transformers" 2>/dev/null || .venv/bin/python -m pip install --quiet -e ".[build]"
}

job_command() {  # job_command JOB: the build_tools command and fixed arguments of a job
    case $1 in
        reader-headings) echo "train-reader --warm-start $ROOT/reader/final --heading-share 0.5 --lr 3e-5 \
--warmup 0.05 --epochs 1 --max-steps 1600";;
        reader-shared) echo "train-reader --warm-start $ROOT/reader/final --shared-norm 3 --lr 3e-5 --warmup 0.05 \
--epochs 1 --max-steps 2000";;
        retriever-medquad) echo "train-retriever --squad --epochs 1";;
        reader-domains) local extra=../shared/data/qa-extra
            echo "train-reader --warm-start $ROOT/reader/final --data ../shared/data/squad/train-v1.1.json.gz \
../shared/data/squad/train-v2.0-first10-articles.json $extra/subjqa_train.squad2.json \
$extra/squadshifts-new_wiki_v1.0.json $extra/squadshifts-reddit_v1.0.json \
$extra/squadshifts-amazon_reviews_v1.0.json $extra/policyqa-dev.json --lr 3e-5 --warmup 0.05 --epochs 1 \
--max-steps 1200";;
        *) echo "train-$1";;
    esac
}

launch() {  # launch JOB [ARGS]: start the job's command in the background, PID in JOB/pid
    local job=$1; shift
    local dir="$ROOT/$job"
    mkdir -p "$dir"
    JEMALLOC=$(ldconfig -p 2>/dev/null | awk '/libjemalloc.so.2 / && !found {print $NF; found = 1}') || JEMALLOC=
    # jemalloc's default decay hands freed pages back at once; with batches of varying length that
    # turns into page faults (a third of the CPU time went to the kernel): keep them for a minute.
    # shellcheck disable=SC2046  # the job command is words, split on purpose
    MALLOC_CONF=${MALLOC_CONF:-background_thread:true,dirty_decay_ms:60000,muzzy_decay_ms:60000} \
    LD_PRELOAD=${JEMALLOC:-} nohup nice -n "${NICE:-10}" .venv/bin/python -m build_tools $(job_command "$job") --out "$dir" "$@" \
        >>"$dir/train.log" 2>&1 &
    LAUNCHED=$!  # the queue waits for its own child with `wait`, not by reading its command line
    echo "$LAUNCHED" >"$dir/pid"
    echo "started $job: PID $LAUNCHED, log $dir/train.log"
}

if [ $# -gt 0 ] && [ "$1" != "--queue" ]; then  # one job by name
    job=$1; shift
    case " ${JOBS[*]} ${BY_NAME[*]} " in *" $job "*) ;;
        *) echo "unknown job $job (one of: ${JOBS[*]} ${BY_NAME[*]})" >&2; exit 2;; esac
    if running "$job"; then
        echo "already running: PID $(cat "$ROOT/$job/pid"), log $ROOT/$job/train.log"; exit 0
    fi
    setup
    launch "$job" "$@"
    exit 0
fi

if [ "${1:-}" = "--queue" ]; then  # the queue itself, in the background
    for job in "${JOBS[@]}"; do
        [ -d "$ROOT/$job/final" ] && continue
        if running "$job"; then
            echo "$(date -u +%FT%TZ) waiting for $job (PID $(cat "$ROOT/$job/pid"))"
        else
            args_var="$(echo "$job" | tr a-z- A-Z_)_ARGS"
            # shellcheck disable=SC2086  # word splitting of the extra arguments is wanted
            launch "$job" ${!args_var:-}
        fi
        if [ -n "${LAUNCHED:-}" ]; then
            wait "$LAUNCHED" || true  # the queue's own child: wait for it exactly
            LAUNCHED=
        fi
        while running "$job"; do sleep "${QUEUE_POLL_S:-60}"; done  # one started elsewhere
        if [ ! -d "$ROOT/$job/final" ]; then
            echo "$(date -u +%FT%TZ) $job stopped before its end (no final/): queue stopped; run scripts/train.sh to resume"
            exit 0
        fi
        echo "$(date -u +%FT%TZ) $job finished"
    done
    echo "$(date -u +%FT%TZ) every job has finished"
    exit 0
fi

if [ -f "$ROOT/queue.pid" ] && grep -qs "train.sh" "/proc/$(cat "$ROOT/queue.pid")/cmdline"; then
    echo "queue already running: PID $(cat "$ROOT/queue.pid"), log $ROOT/queue.log"; exit 0
fi
for job in "${JOBS[@]}"; do
    if [ ! -d "$ROOT/$job/final" ]; then next=$job; break; fi
done
if [ -z "${next:-}" ]; then echo "every job has finished (${JOBS[*]})"; exit 0; fi
setup
nohup "$SELF" --queue >>"$ROOT/queue.log" 2>&1 &
echo $! >"$ROOT/queue.pid"
echo "queue started: PID $!, log $ROOT/queue.log; next job: $next$(running "$next" && echo " (running, waited for)")"
