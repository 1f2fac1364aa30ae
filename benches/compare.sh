#!/usr/bin/env bash
# Side-by-side throughput on this machine, in one run and with the same load:
#   direct to the gateway simulator; nginx as a reverse proxy (keep-alive upstream,
#   access log of request metadata); relaylog durable (default); relaylog async.
# Prints messages/s, p50/p99, and for nginx and relaylog the CPU per message (utime +
# stime from /proc/PID/stat, nginx's workers included) and context switches per
# message (every thread's, from /proc/PID/task/*/status), and the ratios the targets
# are stated in.
#
#   benches/compare.sh [--connections 64] [--duration 10s] [--api kannel]
#
# Loopback only. nginx is installed with apt-get when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

connections=64
duration=10s
api=kannel
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) connections=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --api) api=$2; shift 2 ;;
        *) echo "usage: $0 [--connections N] [--duration D] [--api kannel|jasmin|json]" >&2; exit 2 ;;
    esac
done

if ! command -v nginx >/dev/null 2>&1; then
    echo "installing nginx (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx >/dev/null
fi
cargo build --release --quiet
bin=target/release/relaylog
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

sim=$(port); ngx=$(port); durable=$(port); async=$(port)
"$bin" mock-gateway --listen "127.0.0.1:$sim" --api "$api" 2>"$work/sim.log" & pids+=($!)

mkdir -p "$work/nginx/logs"
# As Debian's package ships it: one worker per core.
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes auto;
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    log_format meta '\$remote_addr:\$remote_port [\$time_iso8601] "\$request_method \$uri" \$status \$request_length \$upstream_response_time';
    access_log $work/nginx/logs/access.log meta;
    upstream gateway { server 127.0.0.1:$sim; keepalive 64; }
    server {
        listen 127.0.0.1:$ngx;
        location / {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' & ngx_pid=$!
pids+=($ngx_pid)
declare -A relay_pid

for mode in durable async; do
    p=${!mode}
    d="$work/$mode"
    mkdir -p "$d"
    cat > "$d/relaylog.toml" <<CONF
[store]
path = "$d/store"
keyring = "$d/keys/keyring"
master-key = "$d/keys/master.key"
signing-key = "$d/keys/signing.key"
ledger = "$d/ledger.sqlite"
durability = "$( [ "$mode" = durable ] && echo record-before-forward || echo async )"
[[listener]]
name = "sms"
listen = "127.0.0.1:$p"
profile = "$api"
upstream = "http://127.0.0.1:$sim"
CONF
    "$bin" --config "$d/relaylog.toml" init >/dev/null
    "$bin" --config "$d/relaylog.toml" serve 2>"$d/serve.log" & relay_pid[$mode]=$!
    pids+=(${relay_pid[$mode]})
done
for p in "$sim" "$ngx" "$durable" "$async"; do wait_port "$p"; done

# CPU ticks (utime + stime) and context switches (voluntary and not, every thread) of
# a process and its children (nginx's workers): "ticks switches".
usage() {
    local ps=("$1") t=0 c=0 p
    ps+=($(pgrep -P "$1" || true))
    for p in "${ps[@]}"; do
        t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat")))
        c=$((c + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s+0}')))
    done
    echo "$t $c"
}
run() { # name port [pid]
    local before after
    before=$( [ -n "${3:-}" ] && usage "$3" || echo "0 0" )
    "$bin" bench http --target "http://127.0.0.1:$2" --api "$api" --connections "$connections" \
        --duration "$duration" --quiet --json > "$work/$1.json"
    after=$( [ -n "${3:-}" ] && usage "$3" || echo "0 0" )
    echo "$before $after" > "$work/$1.usage"
}
run direct "$sim"; run nginx "$ngx" "$ngx_pid"
run relaylog-durable "$durable" "${relay_pid[durable]}"; run relaylog-async "$async" "${relay_pid[async]}"

# Added latency at half of nginx's saturating rate: open loop, same rate, direct and
# through relaylog (durable).
half=$(python3 -c 'import json,sys; print(max(1, int(json.load(open(sys.argv[1]))["requests_per_second"] / 2)))' "$work/nginx.json")
open_loop() {
    "$bin" bench http --target "http://127.0.0.1:$2" --api "$api" --connections "$connections" \
        --duration "$duration" --rate "$half" --quiet --json > "$work/$1.json"
}
open_loop half-direct "$sim"; open_loop half-relaylog "$durable"

python3 - "$work" "$connections" "$duration" "$api" "$(getconf CLK_TCK)" <<'PY'
import json, os, platform, sys
work, conns, duration, api, hz = sys.argv[1:6]
hz = int(hz)
rows = {}
for name in ["direct", "nginx", "relaylog-durable", "relaylog-async"]:
    rows[name] = json.load(open(os.path.join(work, name + ".json")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# {api}, {conns} connections, {duration} each; {os.cpu_count()} cores ({cpu}); load generator on the same cores")
print(f"{'target':<18} {'messages/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU µs/msg':>11} {'switches/msg':>13}")
for name, r in rows.items():
    errors = r["errors"]["connect"] + r["errors"]["io"] + r["errors"]["timeout"] + sum(r["errors"]["status"].values())
    t0, c0, t1, c1 = map(int, open(os.path.join(work, name + ".usage")).read().split())
    msgs = r["messages"] if "messages" in r else r["messages_per_second"] * r["seconds"]
    cpu_s = f"{(t1 - t0) / hz * 1e6 / msgs:.1f}" if t1 > t0 and msgs else "-"
    sw_s = f"{(c1 - c0) / msgs:.2f}" if c1 > c0 and msgs else "-"
    print(f"{name:<18} {r['messages_per_second']:>11.0f} {r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f} {errors:>7} {cpu_s:>11} {sw_s:>13}")
n, d, a = (rows[k]["messages_per_second"] for k in ["nginx", "relaylog-durable", "relaylog-async"])
print(f"relaylog durable / nginx: {d / n:.2f}x   relaylog async / nginx: {a / n:.2f}x   durable / async: {d / a:.2f}x")
hd = json.load(open(os.path.join(work, "half-direct.json")))
hr = json.load(open(os.path.join(work, "half-relaylog.json")))
print(f"open loop at half of nginx's rate ({hr['requests_per_second']:.0f} req/s): p99 direct {hd['latency_ms']['p99']:.2f} ms, "
      f"through relaylog {hr['latency_ms']['p99']:.2f} ms, added {hr['latency_ms']['p99'] - hd['latency_ms']['p99']:.2f} ms")
PY
