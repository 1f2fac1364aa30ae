#!/usr/bin/env bash
# The tail under a long steady load: relaylog durable (Kannel profile, in front of
# `relaylog mock-gateway`) driven open loop by `relaylog bench http` in consecutive
# windows. Prints each window's p50, p99,
# p99.9 and maximum latency with the CPU time the hypervisor stole from the machine in
# it (/proc/stat: a window with seconds stolen measures the machine, not relaylog),
# then relaylog's commit-time histogram over the whole run (relaylog_commit_seconds:
# what a durable client waits on the store for) and its peak RSS.
#
#   benches/tail.sh [--rate 15000] [--windows 20] [--window 30s] [--connections 64]
#
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

rate=15000
windows=20
window=30s
connections=64
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --windows) windows=$2; shift 2 ;;
        --window) window=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        *) echo "usage: $0 [--rate R] [--windows N] [--window D] [--connections N]" >&2; exit 2 ;;
    esac
done
command -v curl >/dev/null || { echo "$0 needs curl (for relaylog's /metrics)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/relaylog
. benches/lib.sh
bench_setup


sim=$(port); relay=$(port); admin=$(port)
"$bin" mock-gateway --listen "127.0.0.1:$sim" --api kannel 2>"$work/sim.log" & pids+=($!)
{ store_toml "$work"; cat <<CONF
[[listener]]
name = "sms"
listen = "127.0.0.1:$relay"
profile = "kannel"
upstream = "http://127.0.0.1:$sim"
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
CONF
} > "$work/relaylog.toml"
"$bin" --config "$work/relaylog.toml" init >/dev/null
"$bin" --config "$work/relaylog.toml" serve 2>"$work/serve.log" & relay_pid=$!
pids+=($relay_pid)
for p in "$sim" "$relay" "$admin"; do wait_port "$p"; done

hz=$(getconf CLK_TCK)
echo "# relaylog durable, Kannel GET, $connections connections, open loop at $rate/s, $windows windows of $window"
printf '%-7s %10s %8s %8s %9s %9s %11s\n' window "req/s" "p50 ms" "p99 ms" "p99.9 ms" "max ms" "stolen ms"
for i in $(seq "$windows"); do
    s0=$(steal)
    "$bin" bench http --target "http://127.0.0.1:$relay" --api kannel --connections "$connections" \
        --duration "$window" --rate "$rate" --quiet --json > "$work/w.json"
    s1=$(steal)
    python3 - "$work/w.json" "$i" $(( (s1 - s0) * 1000 / hz )) <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_ms"]
errors = r["errors"]["connect"] + r["errors"]["io"] + r["errors"]["timeout"] + sum(r["errors"]["status"].values())
print(f"{sys.argv[2]:<7} {r['requests_per_second']:>10.0f} {l['p50']:>8.2f} {l['p99']:>8.2f} {l['p99_9']:>9.2f} {l['max']:>9.1f} {sys.argv[3]:>11}" + (f"  errors {errors}" if errors else ""))
PY
done
echo "# relaylog_commit_seconds over the run (commits at most this long: count)"
curl -s "http://127.0.0.1:$admin/metrics" | awk -F'[{}" ]+' '/^relaylog_commit_seconds_bucket/ {print "  <= " $3 " s: " $NF}'
echo "# relaylog peak RSS: $(awk '/VmHWM/ {print $2 / 1024}' "/proc/$relay_pid/status") MiB"
