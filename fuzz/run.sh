#!/usr/bin/env bash
# Runs every fuzz target (`cargo fuzz list`) for SECONDS each, one after another, and
# prints a table: target, executions, executions per second, corpus size, crashes.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        SECONDS defaults to 30
#
# Seeds come from fuzz/corpus/TARGET (committed, small); what a run adds goes to
# fuzz/target/corpus/TARGET (not committed; kept for the next run). A crash or leak
# is left in fuzz/artifacts/TARGET/ and the script fails: turn each into a regression
# test named after it (`cargo fuzz fmt TARGET ARTIFACT` prints the input). Needs
# cargo-fuzz (`cargo install cargo-fuzz --locked`); it builds with the sanitizers on
# the stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
shift || true
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build >/dev/null
failed=()
rows=()
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t" "corpus/$t"
    log="target/fuzz-$t.log"
    # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: one that needs 2 GiB
    # is a leak or an unbounded buffer.
    if cargo fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
    else
        crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
        [ "$crashes" -gt 0 ] || crashes="? (see fuzz/$log)"
        failed+=("$t")
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    took=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
    corpus=$(find "target/corpus/$t" "corpus/$t" -type f | wc -l)
    rows+=("$(printf '%-18s %12s %10s %8s  %s' "$t" "${execs:--}" "${took:--}" "$corpus" "$crashes")")
done
printf '%-18s %12s %10s %8s  %s\n' target executions "execs/s" corpus crashes
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in fuzz/target/, inputs in fuzz/artifacts/)" >&2
    exit 1
fi
