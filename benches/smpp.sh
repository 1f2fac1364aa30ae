#!/usr/bin/env bash
# SMPP side by side, in one run, with the same load on the same cores: `relaylog bench
# smpp` (8 sessions, a window of 64, submit_sm with one destination) against the SMSC
# simulator directly; HAProxy in `mode tcp` in front of it (the proxy an operator
# would otherwise use: it copies bytes); relaylog durable (record before forward);
# relaylog async. Prints submits/s, p50/p99, CPU per submit (utime + stime from
# /proc/PID/stat) of HAProxy and relaylog, and the ratios issue 12 states its targets
# in; then the latency relaylog adds at half of HAProxy's rate (open loop) and at half
# of its own; and the CPU the store alone takes per record (`bench store`), the floor
# under relaylog's figure.
#
#   benches/smpp.sh [--sessions 8] [--window 64] [--duration 10s]
#
# Loopback only. HAProxy (and GNU time) are installed with apt-get when missing
# (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=8
window=64
duration=10s
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) sessions=$2; shift 2 ;;
        --window) window=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        *) echo "usage: $0 [--sessions N] [--window W] [--duration D]" >&2; exit 2 ;;
    esac
done

if ! command -v haproxy >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then
    echo "installing haproxy and time (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy time >/dev/null
fi
cargo build --release --quiet
bin=target/release/relaylog
. benches/lib.sh
bench_setup


smsc=$(port); hap=$(port); durable=$(port); async=$(port)
"$bin" mock-gateway --listen "127.0.0.1:$smsc" --api smpp --receipt-delay 1s 2>"$work/smsc.log" & pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend smpp
    bind 127.0.0.1:$hap
    default_backend smsc
backend smsc
    server smsc 127.0.0.1:$smsc
CONF
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & hap_pid=$!
pids+=($hap_pid)

declare -A relay_pid
for mode in durable async; do
    p=${!mode}
    d="$work/$mode"
    mkdir -p "$d"
    { store_toml "$d"; cat <<CONF
durability = "$( [ "$mode" = durable ] && echo record-before-forward || echo async )"
[[listener]]
name = "smpp"
protocol = "smpp"
listen = "127.0.0.1:$p"
upstream = "smpp://127.0.0.1:$smsc"
window = $window
[log]
level = "warn"
CONF
} > "$d/relaylog.toml"
    "$bin" --config "$d/relaylog.toml" init >/dev/null
    "$bin" --config "$d/relaylog.toml" serve 2>"$d/serve.log" & relay_pid[$mode]=$!
    pids+=(${relay_pid[$mode]})
done
for p in "$smsc" "$hap" "$durable" "$async"; do wait_port "$p"; done

run() { # name port pid [rate]
    local t0 t1 rate=()
    [ -n "${4:-}" ] && rate=(--rate "$4")
    t0=$( [ -n "$3" ] && ticks "$3" || echo 0 )
    "$bin" bench smpp --target "127.0.0.1:$2" --sessions "$sessions" --window "$window" \
        --duration "$duration" "${rate[@]}" --quiet --json > "$work/$1.json"
    t1=$( [ -n "$3" ] && ticks "$3" || echo 0 )
    echo $((t1 - t0)) > "$work/$1.ticks"
}
run direct "$smsc" ""
run haproxy "$hap" "$hap_pid"
run relaylog-durable "$durable" "${relay_pid[durable]}"
run relaylog-async "$async" "${relay_pid[async]}"
half=$(python3 -c 'import json,sys; print(max(1, int(json.load(open(sys.argv[1]))["submits_per_second"] / 2)))' "$work/haproxy.json")
run half-haproxy "$hap" "" "$half"
run half-relaylog "$durable" "" "$half"
# Half of HAProxy's rate is more than relaylog carries; the same comparison at half
# of relaylog's own rate shows what it adds when it is not saturated.
half_own=$(python3 -c 'import json,sys; print(max(1, int(json.load(open(sys.argv[1]))["submits_per_second"] / 2)))' "$work/relaylog-durable.json")
run own-haproxy "$hap" "" "$half_own"
run own-relaylog "$durable" "" "$half_own"
# The store's own floor: sealing and committing records alone, no network (CPU of
# the bench process, which runs the real store).
store="$work/store"
mkdir -p "$store"
sed -e "s|$work/durable|$store|g" -e "/^\[\[listener\]\]/,\$d" "$work/durable/relaylog.toml" > "$store/relaylog.toml"
"$bin" --config "$store/relaylog.toml" init >/dev/null
records=1000000
/usr/bin/time -f "%U %S" -o "$work/store.time" "$bin" --config "$store/relaylog.toml" bench store --records $records --quiet > /dev/null

python3 - "$work" "$sessions" "$window" "$duration" "$(getconf CLK_TCK)" "$half" <<'PY'
import json, os, sys
work, sessions, window, duration, hz, half = sys.argv[1:7]
hz = int(hz)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# {sessions} sessions, window {window}, submit_sm with one destination, {duration} each; "
      f"{os.cpu_count()} cores ({cpu}); load generator, proxies and simulator on the same cores")
def load(name):
    r = json.load(open(os.path.join(work, name + ".json")))
    ticks = int(open(os.path.join(work, name + ".ticks")).read())
    us = ticks / hz * 1e6 / r["ok"] if r["ok"] and ticks else None
    return r, us
rows = {n: load(n) for n in ["direct", "haproxy", "relaylog-durable", "relaylog-async"]}
print(f"{'target':<18} {'submits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/submit':>14}")
for n, (r, us) in rows.items():
    cpu_s = f"{us:.1f}" if us is not None else "-"
    print(f"{n:<18} {r['submits_per_second']:>10.0f} {r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f} {cpu_s:>14}")
h = rows["haproxy"][0]["submits_per_second"]
d = rows["relaylog-durable"][0]["submits_per_second"]
print(f"relaylog durable: {d:.0f} submits/s (target >= 100,000); {d / h:.2f}x HAProxy (target >= 0.5, aim 0.8)")
hh = json.load(open(os.path.join(work, "half-haproxy.json")))
hr = json.load(open(os.path.join(work, "half-relaylog.json")))
added = hr["latency_ms"]["p99"] - hh["latency_ms"]["p99"]
print(f"at half of HAProxy's rate ({half}/s): p99 through HAProxy {hh['latency_ms']['p99']:.2f} ms, "
      f"through relaylog {hr['latency_ms']['p99']:.2f} ms: {added:.2f} ms added (target <= 2 ms)")
oh = json.load(open(os.path.join(work, "own-haproxy.json")))
orl = json.load(open(os.path.join(work, "own-relaylog.json")))
print(f"at half of relaylog's rate ({orl['submits_per_second']:.0f}/s): p99 through HAProxy {oh['latency_ms']['p99']:.2f} ms, "
      f"through relaylog {orl['latency_ms']['p99']:.2f} ms: {orl['latency_ms']['p99'] - oh['latency_ms']['p99']:.2f} ms added")
u, s_ = map(float, open(os.path.join(work, "store.time")).read().split())
print(f"the store alone (bench store, 1,000,000 records, no network): {(u + s_) * 1e6 / 1_000_000:.1f} µs CPU per record; "
      f"a submit writes a record and an outcome")
PY
