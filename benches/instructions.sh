#!/usr/bin/env bash
# User-space instructions per message, counted by valgrind's callgrind: a figure the
# host's stolen time and its other tenants do not move, unlike CPU seconds (this
# machine's hypervisor has taken from 0 to 16 s of an 8-second run). Same load as
# benches/compare.sh (Kannel GET, one recipient, 64 keep-alive connections, in front of
# `mock-gateway`), but a fixed number of requests, each proxy run under callgrind:
#   - nginx (one process: master_process off, its access log of request metadata);
#   - the floor (`relaylog bench passthrough`);
#   - relaylog durable and async (one HTTP thread), per thread: the HTTP thread, the
#     journal's front, the writer, the rest.
# The counters are zeroed after a warm-up and read 3 s after the last answer, so the
# store's work behind the load (ingest, index) is counted with it.
#
#   benches/instructions.sh [--requests 5000] [BINARY...]
#
# With binaries (relaylog builds), each is counted in both modes, in the order given:
# compare two builds' instructions without alternating runs. Without, the release
# build of this tree. Kernel time is not counted (valgrind sees user space only): the
# kernel's share per message is the same for nginx, the floor and relaylog
# (benches/compare.sh prints it). Valgrind's CPU lacks SHA-NI, so SHA-256 costs about
# ten times the instructions it does on a machine with it: count hashes, not seconds.
# Installs valgrind and nginx with apt-get when missing (needs root). Loopback only.
set -euo pipefail

usage() { echo "usage: $0 [--requests N] [BINARY...]" >&2; exit 2; }
requests=5000
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) [ $# -ge 2 ] && [[ $2 =~ ^[1-9][0-9]*$ ]] || usage; requests=$2; shift 2 ;;
        -*) usage ;;
        *) break ;;
    esac
done
binaries=()
for b in "$@"; do
    [ -x "$b" ] || { echo "$b: not an executable" >&2; exit 2; }
    binaries+=("$(realpath "$b")")
done
cd "$(dirname "$0")/.."
for tool in valgrind nginx; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "installing $tool (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
    fi
done
if [ ${#binaries[@]} -eq 0 ]; then
    cargo build --release --quiet
    binaries=("$(realpath target/release/relaylog)")
fi
bin=${binaries[0]}
. benches/lib.sh
bench_setup

sim=$(port)
"$bin" mock-gateway --listen "127.0.0.1:$sim" --api kannel 2>"$work/sim.log" & pids+=($!)
wait_port "$sim"

# Waits (at most 60 s: valgrind starts slowly) until something listens on a port.
wait_slow() { for _ in $(seq 600); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# count NAME PORT COMMAND...: runs COMMAND under callgrind, loads it, and leaves its
# per-thread dumps of the measured requests in $work/NAME.
count() {
    local name=$1 p=$2; shift 2
    mkdir -p "$work/$name"
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/$name/cg" \
        "$@" 2>"$work/$name/valgrind.log" &
    local pid=$!
    pids+=($pid)
    wait_slow "$p"
    "$bin" bench http --target "http://127.0.0.1:$p" --api kannel --connections 64 \
        --requests 2000 --quiet --json >/dev/null
    sleep 3
    timeout 60 callgrind_control -z "$pid" >/dev/null 2>&1 || { echo "callgrind_control -z failed for $name" >&2; exit 1; }
    "$bin" bench http --target "http://127.0.0.1:$p" --api kannel --connections 64 \
        --requests "$requests" --quiet --json > "$work/$name/load.json"
    sleep 3
    timeout 60 callgrind_control -d "$pid" >/dev/null 2>&1 || { echo "callgrind_control -d failed for $name" >&2; exit 1; }
    # The dump is written by the process itself, after the command returns.
    for _ in $(seq 100); do ls "$work/$name"/cg.1* >/dev/null 2>&1 && break; sleep 0.1; done
    ls "$work/$name"/cg.1* >/dev/null 2>&1 || { echo "no callgrind dump for $name" >&2; exit 1; }
    sleep 1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

ngx=$(port)
nginx_conf "$work/nginx-conf" "$ngx" "$sim" "master_process off;" "daemon off;" "worker_processes 1;"
count nginx "$ngx" nginx -p "$work/nginx-conf" -c "$work/nginx-conf/nginx.conf"
floor=$(port)
count floor "$floor" "$bin" bench passthrough --listen "127.0.0.1:$floor" --upstream "127.0.0.1:$sim"

names=(nginx floor)
for i in "${!binaries[@]}"; do
    for mode in durable async; do
        name="relaylog-$mode"
        [ ${#binaries[@]} -gt 1 ] && name="$name-$((i + 1))"
        p=$(port)
        d="$work/$name-store"
        mkdir -p "$d"
        { store_toml "$d"; cat <<CONF
durability = "$( [ "$mode" = durable ] && echo record-before-forward || echo async )"
[serve]
http-threads = 1
[[listener]]
name = "sms"
listen = "127.0.0.1:$p"
profile = "kannel"
upstream = "http://127.0.0.1:$sim"
CONF
        } > "$d/relaylog.toml"
        # Builds from before `serve.http-threads` ran their listeners on the runtime's
        # workers: one of them instead.
        if ! "${binaries[$i]}" --config "$d/relaylog.toml" init >/dev/null 2>"$d/init.log"; then
            grep -q 'unknown field `http-threads`' "$d/init.log" || { cat "$d/init.log" >&2; exit 1; }
            sed -i 's/^http-threads = 1$/workers = 1/' "$d/relaylog.toml"
            "${binaries[$i]}" --config "$d/relaylog.toml" init >/dev/null
        fi
        count "$name" "$p" "${binaries[$i]}" --config "$d/relaylog.toml" serve
        names+=("$name")
    done
done

echo "# user-space instructions per message (callgrind), $requests requests, Kannel GET, one recipient, 64 connections"
for i in "${!binaries[@]}"; do echo "# relaylog-*$([ ${#binaries[@]} -gt 1 ] && echo "-$((i + 1))"): ${binaries[$i]}"; done
python3 - "$work" "${names[@]}" <<'PY'
import glob, json, re, subprocess, sys
work, names = sys.argv[1], sys.argv[2:]
# A thread is named by a function only it runs.
threads = [("relaylog::store::writer::Writer::run", "writer"),
           ("relaylog::store::front::Front::run", "journal"),
           ("relaylog::ingress::http::request::Listener", "http"),
           ("relaylog::store::writer::spawn_checkpointer", "checkpointer")]
base = None
print(f"{'target':<22}{'instr/msg':>12}{'× nginx':>9}{'SHA-256':>9}  by thread")
for name in names:
    d = f"{work}/{name}"
    ok = json.load(open(f"{d}/load.json"))["ok"]
    if ok == 0:
        sys.exit(f"{name}: no request answered")
    per, sha = {}, 0
    for f in glob.glob(f"{d}/cg.1*"):
        text = open(f, errors="replace").read()
        m = re.search(r"^summary:\s+(\d+)", text, re.M)
        n = int(m.group(1)) if m else 0
        if n == 0:
            continue
        label = next((t for key, t in threads if key in text), "other")
        per[label] = per.get(label, 0) + n
        # Exclusive instructions of SHA-256's block function (see the note above).
        out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", f],
                             capture_output=True, text=True).stdout
        sha += sum(int(l.split()[0].replace(",", "")) for l in out.splitlines()
                   if "sha256_block_data_order_" in l and "[" in l and l.strip()[0].isdigit()
                   and l.split()[1].startswith("("))
    if name.startswith("relaylog"):
        # A thread the labels miss (a function renamed or inlined) would be counted
        # as "other", and SHA-256 as none: say so rather than print it.
        missing = {"http", "writer", "journal"} - per.keys()
        if missing or sha == 0:
            sys.exit(f"{name}: no {', '.join(sorted(missing)) or 'SHA-256'} found in the dumps; update the labels")
    total = sum(per.values()) / ok
    base = base or total
    split = "  ".join(f"{k} {v / ok:,.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])) if name.startswith("relaylog") else ""
    print(f"{name:<22}{total:>12,.0f}{total / base:>8.2f}x{sha / ok:>9,.0f}  {split}")
PY
