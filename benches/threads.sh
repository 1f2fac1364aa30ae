#!/usr/bin/env bash
# Where a relaylog build spends its CPU, thread by thread, under the same load as
# benches/compare.sh (`bench http`, Kannel GET, one recipient, 64 connections), in
# front of `mock-gateway`. For each build given, alternating for --rounds rounds so
# that the machine's drift falls on all of them, it prints:
#   - messages/s, and serve's CPU per message (utime + stime, /proc/PID/stat);
#   - the same per thread name (HTTP threads, runtime workers, journal, writer,
#     checkpointer), split into user space and kernel, of the
#     threads alive at both ends of the run (/proc/PID/task/*/stat);
#   - context switches per message (those threads', /proc/PID/task/*/status);
#   - records per commit (relaylog_records_written_total over
#     relaylog_batch_records_count, from the admin listener's /metrics; commits of
#     outcomes alone count too, so it understates the records of a durable batch);
#   - the CPU time the hypervisor stole from the machine during the run (/proc/stat).
#
#   benches/threads.sh [--cores one|all] [--mode durable|async] [--duration 6]
#                      [--rounds 1] BINARY [BINARY...]
#
# --cores one: serve on core 1, the load generator and the simulator on core 0.
# Loopback only.
set -euo pipefail

usage() { echo "usage: $0 [--cores one|all] [--mode durable|async] [--duration S] [--rounds N] BINARY..." >&2; exit 2; }
cores=one mode=durable duration=6 rounds=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cores) cores=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
binaries=()
for b in "$@"; do binaries+=("$(realpath "$b")"); done
cd "$(dirname "$0")/.."
case "$cores" in one|all) ;; *) usage ;; esac
case "$mode" in durable) durability=record-before-forward ;; async) durability=async ;; *) usage ;; esac
. benches/lib.sh
bench_setup
if [ "$cores" = one ]; then relay=(taskset -c 1); rest=(taskset -c 0); else relay=(); rest=(); fi

# Per thread, its CPU ticks: "name user kernel" lines (a thread gone meanwhile is
# skipped).
thread_ticks() {
    local t name stat
    for t in /proc/"$1"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) && stat=$(cat "$t/stat" 2>/dev/null) || continue
        echo "$name $(sed 's/.*) //' <<<"$stat" | awk '{print $12, $13}')"
    done
}
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}' || true; }

# run BINARY: one measured run, one result line.
run() {
    local bin=$1 sim p adm d mp rp s0 s1 c0 c1 t0 t1
    sim=$(port); p=$(port); adm=$(port)
    d=$(mktemp -d -p "$work")
    "${rest[@]}" "$bin" mock-gateway --listen "127.0.0.1:$sim" --api kannel 2>/dev/null & mp=$!
    pids+=("$mp")
    { store_toml "$d"; cat <<CONF
durability = "$durability"
[[listener]]
name = "sms"
listen = "127.0.0.1:$p"
profile = "kannel"
upstream = "http://127.0.0.1:$sim"
[admin]
listen = "127.0.0.1:$adm"
CONF
    } > "$d/relaylog.toml"
    "$bin" --config "$d/relaylog.toml" init >/dev/null
    "${relay[@]}" "$bin" --config "$d/relaylog.toml" serve 2>"$d/serve.log" & rp=$!
    pids+=("$rp")
    wait_port "$sim"; wait_port "$p"; wait_port "$adm"
    # Warm-up: the partition's keys, the pool's connections, the page cache.
    "${rest[@]}" "$bin" bench http --target "http://127.0.0.1:$p" --api kannel --connections 64 --duration 2s --quiet --json >/dev/null
    curl -fsS "127.0.0.1:$adm/metrics" > "$d/m0"; thread_ticks "$rp" > "$d/t0"; c0=$(switches "$rp"); s0=$(steal); t0=$(ticks "$rp")
    "${rest[@]}" "$bin" bench http --target "http://127.0.0.1:$p" --api kannel --connections 64 --duration "${duration}s" --quiet --json > "$d/load.json"
    curl -fsS "127.0.0.1:$adm/metrics" > "$d/m1"; thread_ticks "$rp" > "$d/t1"; c1=$(switches "$rp"); s1=$(steal); t1=$(ticks "$rp")
    kill "$rp" "$mp" 2>/dev/null || true
    wait "$rp" "$mp" 2>/dev/null || true
    python3 - "$d" "$bin" "$((c1 - c0))" "$((s1 - s0))" "$(getconf CLK_TCK)" "$((t1 - t0))" <<'PY'
import collections, json, os, re, sys
d, binary, switches, stolen, hz, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
load = json.load(open(os.path.join(d, "load.json")))
n = load["ok"]
def ticks(name):
    user, kernel = collections.Counter(), collections.Counter()
    for line in open(os.path.join(d, name)):
        thread, u, k = line.rsplit(" ", 2)
        user[thread] += int(u)
        kernel[thread] += int(k)
    return user, kernel
(u0, k0), (u1, k1) = ticks("t0"), ticks("t1")
def metrics(name):
    out = {}
    for line in open(os.path.join(d, name)):
        m = re.match(r"(relaylog_records_written_total|relaylog_batch_records_count) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
m0, m1 = metrics("m0"), metrics("m1")
commits = m1.get("relaylog_batch_records_count", 0) - m0.get("relaylog_batch_records_count", 0)
records = m1.get("relaylog_records_written_total", 0) - m0.get("relaylog_records_written_total", 0)
us = lambda t: t * 1e6 / hz / n if n else float("nan")
def spent(k):
    return (u1[k] - u0[k], k1[k] - k0[k])
per_thread = "  ".join(
    f"{k} {us(sum(spent(k))):.1f} ({us(spent(k)[0]):.1f}+{us(spent(k)[1]):.1f})"
    for k in sorted(u1) if sum(spent(k)) > 0)
print(f"{binary}: {load['messages_per_second']:.0f} msg/s, {us(total):.1f} us/msg "
      f"[{per_thread}], {switches / n if n else float('nan'):.2f} switches/msg, {records / commits if commits else float('nan'):.1f} records/commit, "
      f"stolen {stolen * 1000 // hz} ms")
PY
}

echo "# $mode, cores $cores, bench http 64 connections, ${duration}s per run; CPU per message by thread in µs (user space + kernel)"
for _ in $(seq "$rounds"); do
    for bin in "${binaries[@]}"; do run "$bin"; done
done
