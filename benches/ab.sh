#!/usr/bin/env bash
# A/B of two relaylog builds on this machine: each build's `serve` (durable, built-in
# Kannel simulator or sink MTA) under the same load, alternating, so that the
# machine's drift falls on both. Prints messages/s and serve's CPU per message
# (utime + stime from /proc/PID/stat), the steadier figure on a shared machine.
#
#   benches/ab.sh [--smtp] [--old-serve TOML] [--new-serve TOML] OLD_BINARY NEW_BINARY [ROUNDS]
#
# OLD_BINARY and NEW_BINARY: e.g. an older commit built in a worktree, or one build twice
# with different `[serve]` settings (`--old-serve 'http-threads = 1' --new-serve
# 'http-threads = 2'`: lines for each side's `[serve]` table).
#
# HTTP: `bench http`, 64 connections, Kannel. SMTP: `bench smtp`, 20 sessions of 100
# pipelined messages each (serve's CPU then includes its sink's, the same for both).
# Loopback only; ports 18080/18090.
set -euo pipefail
smtp=false
declare -A serve=([old]="" [new]="")
while [ $# -gt 0 ]; do
    case "$1" in
        --smtp) smtp=true; shift ;;
        --old-serve) serve[old]=$2; shift 2 ;;
        --new-serve) serve[new]=$2; shift 2 ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "usage: $0 [--smtp] [--old-serve TOML] [--new-serve TOML] OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-5}
load=$new
tck=$(getconf CLK_TCK)
run() {
    local name=$1 bin=$2 dir pid t0 t1 out
    dir=$(mktemp -d)
    cat > "$dir/c.toml" <<T
[store]
path = "$dir/store"
keyring = "$dir/keys/keyring"
master-key = "$dir/keys/master.key"
signing-key = "$dir/keys/signing.key"
ledger = "$dir/ledger.sqlite"
[[listener]]
name = "relay"
listen = "127.0.0.1:18080"
$( $smtp && echo 'protocol = "smtp"' || echo 'profile = "kannel"' )
[admin]
listen = "127.0.0.1:18090"
[log]
level = "warn"
${serve[$name]:+[serve]
${serve[$name]}}
T
    "$bin" --config "$dir/c.toml" init >/dev/null 2>&1
    "$bin" --config "$dir/c.toml" serve 2>"$dir/err" &
    pid=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.1; done
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    if $smtp; then
        out=$("$load" bench smtp --target 127.0.0.1:18080 --sessions 20 --messages-per-session 100 --duration 10s --json --quiet)
    else
        out=$("$load" bench http --target http://127.0.0.1:18080 --connections 64 --duration 10s --json --quiet)
    fi
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$name" "$out" "$t0" "$t1" "$tck" <<'P'
import json, sys
name, out, t0, t1, tck = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cpu = (t1 - t0) / tck
n = out["ok"]
print(f"{name}: {out['messages_per_second']:.0f} msg/s, serve CPU {cpu:.2f} s for {n} messages = {cpu / max(n, 1) * 1e6:.1f} us/msg")
P
    rm -rf "$dir"
}
for _ in $(seq "$rounds"); do
    run old "$old"
    run new "$new"
done
