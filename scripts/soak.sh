#!/usr/bin/env bash
# Long soak runs of the reliability tests, in release:
#
#   tests/chaos.rs          TASKS tasks on two worker processes with ~1% faults (Err, panic,
#                           abort, exit, SIGKILL from outside, timeouts, cancels before, during,
#                           while queued and while sent behind a running task; tasks that start
#                           a `sleep` and are stopped; 80 KiB stderr floods then abort; outputs
#                           nested 1 000 levels; SIGKILL of idle workers); ends checking that no
#                           child, task-started process, stderr thread or descriptor is left;
#                           then TASKS/10 tasks with `retries = 2` following random plans of
#                           faults, under SIGKILLs, none of which may run more than 3 times
#   tests/thread_stress.rs  TASKS tasks per test on a two-thread pool (panics, rayon inside
#                           tasks, nested dispatch; shutdown, kill and drop with tasks queued)
#
# Usage, from anywhere in the repository:
#
#   scripts/soak.sh [TASKS]                          # TASKS defaults to 100000
#   PARALLEL_SOAK_SEED=12345 scripts/soak.sh 20000   # another fault pattern for the chaos soak
#
# Cargo's own variables (CARGO_TARGET_DIR, ...) are honoured. Prints one summary line per soak
# (tasks, faults per kind, worker deaths, elapsed); a failed soak prints the end of its output,
# the other soak still runs, and the script exits non-zero. The full output of each run is kept
# in a temporary directory.
set -euo pipefail

tasks=${1:-100000}
cd "$(dirname "$0")/.."
logs=$(mktemp -d "${TMPDIR:-/tmp}/parallel-soak.XXXXXX")

failed=0

# run NAME PATTERN COMMAND...: runs COMMAND with its output in $logs/NAME.log, then prints the
# lines matching PATTERN (the summaries) and, if it failed, the end of the log.
run() {
    local name=$1 pattern=$2
    shift 2
    echo "== $name: $*" >&2
    if "$@" >"$logs/$name.log" 2>&1; then
        grep -E "$pattern" "$logs/$name.log" || true
    else
        local status=$?
        grep -E "$pattern" "$logs/$name.log" || true
        echo "== $name FAILED (exit $status); the end of $logs/$name.log:" >&2
        # The injected panics are expected noise; the failure is at the end. Lines are cut: the
        # chaos soak's stderr floods have no newline.
        grep -v -E '^(chaos|stress) panic [0-9]+$|^note: run with|^$' "$logs/$name.log" |
            cut -c 1-1000 | tail -n 40 >&2
        failed=1
    fi
}

run chaos '^chaos soak|^test result' \
    env PARALLEL_SOAK_TASKS="$tasks" PARALLEL_SOAK_RETRY_TASKS="$((tasks / 10))" \
    cargo test --release --features process --test chaos -- --nocapture
run thread_stress '^thread stress:|^test result' \
    env PARALLEL_STRESS_TASKS="$tasks" \
    cargo test --release --features process --test thread_stress -- --nocapture
if [ "$failed" -ne 0 ]; then
    echo "== a soak FAILED; logs in $logs" >&2
    exit 1
fi
echo "== all soaks passed; logs in $logs" >&2
