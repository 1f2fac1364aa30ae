#!/usr/bin/env bash
# Runs every fuzz target (`cargo fuzz list`), or those named, for SECONDS each, one
# after another, and prints a table: target, executions, executions per second,
# corpus size, crashes.
#
#   fuzz/run.sh [SECONDS] [TARGET...]        SECONDS defaults to 30
#
# Each target's corpus is fuzz/corpus/TARGET: the committed seeds are its seed-* files;
# what a run adds there is ignored by git and kept for the next run. The config_file
# target also starts from the shipped configurations (config/*.toml, copied in). A
# crash, leak or hang is left in fuzz/artifacts/TARGET/ and the script fails: turn each
# into a regression test named after it (`cargo fuzz fmt TARGET ARTIFACT` prints the
# input). Needs cargo-fuzz (`cargo install cargo-fuzz --version 0.13.2 --locked`); it
# builds with the sanitizers on the stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=30
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
[ "$seconds" -gt 0 ] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --version 0.13.2 --locked" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
if [ $# -gt 0 ]; then
    for t in "${targets[@]}"; do cargo fuzz build "$t" >/dev/null; done
else
    cargo fuzz build >/dev/null
fi
mkdir -p target corpus/config_file
for c in ../config/*.toml; do cp "$c" "corpus/config_file/shipped-$(basename "$c")"; done
failed=()
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # Artifacts of earlier runs (kept, until they are tests) are not this run's.
    stamp="target/fuzz-$t.start"
    touch "$stamp"
    log="target/fuzz-$t.log"
    # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: one that needs 2 GiB
    # is a leak or an unbounded buffer.
    if cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
    else
        crashes=$(find "artifacts/$t" -type f -newer "$stamp" 2>/dev/null | wc -l || true)
        [ "$crashes" -gt 0 ] || crashes="? (see fuzz/$log)"
        failed+=("$t")
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    took=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    rows+=("$(printf '%-18s %12s %10s %8s  %s' "$t" "${execs:--}" "${took:--}" "$corpus" "$crashes")")
done
printf '%-18s %12s %10s %8s  %s\n' target executions "execs/s" corpus crashes
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in fuzz/target/, inputs in fuzz/artifacts/)" >&2
    exit 1
fi
