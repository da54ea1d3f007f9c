#!/usr/bin/env bash
# Fuzzes the wire protocol's decoders (fuzz/fuzz_targets/): frames on both ends of a worker's
# channel, task values decoded from untrusted bytes, replies whose values nest deep, and the
# shared rings (jobs and replies) left in any state by a hostile peer, and the memory files of
# large frames a hostile worker sends.
#
#   scripts/fuzz.sh [seconds per target, default 600]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz wants a nightly compiler for its
# sanitizer flags; with only a stable toolchain, RUSTC_BOOTSTRAP=1 lets stable accept them.
# Findings land in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz

for target in frames values deep_values rings memory_files; do
    echo "== fuzzing ${target} for ${seconds}s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "${target}" -- \
        -max_total_time="${seconds}" -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1
done
