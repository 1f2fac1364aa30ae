#!/usr/bin/env bash
# Side-by-side throughput on this machine, in one run and with the same load:
#   direct to the gateway simulator; nginx as a reverse proxy (keep-alive upstream,
#   access log of request metadata), and the same nginx without its access log; the floor (`relaylog bench passthrough`: a bare
#   hyper pass-through, one thread, nothing recorded); relaylog durable (default);
#   relaylog async.
# Prints messages/s, p50/p99, and for each proxy the CPU per message (utime + stime
# from /proc/PID/stat, nginx's workers included) and its user-space part (utime),
# context switches per message (every thread's, from /proc/PID/task/*/status), for
# relaylog the part of its CPU spent by the store's threads (writer, journal,
# checkpointer: work the floor does not do, nginx's counterpart being its log line), the
# CPU time the hypervisor stole from the machine during the run (/proc/stat: windows
# with much of it are noise); then relaylog's peak RSS, the open-loop latency added at
# half of nginx's rate (by relaylog, and by nginx and the floor at the same rate) and
# at half of relaylog's own (six open-loop runs of --duration each), and the ratios
# the targets of issue 13 are stated in.
#
#   benches/compare.sh [--connections 64] [--duration 10s] [--api kannel]
#                      [--cores all|one] [--load bench|wrk]
#
# --cores one: every proxy gets core 1 alone (nginx with one worker, relaylog and the
# floor pinned with taskset), the load generator and the simulator core 0.
# --load wrk: wrk -t1 (one Kannel GET, one recipient) for the closed-loop runs instead
# of `relaylog bench http`; the open-loop runs always use bench http.
# Loopback only. nginx and wrk are installed with apt-get when missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

connections=64
duration=10s
api=kannel
cores=all
load=bench
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) connections=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --api) api=$2; shift 2 ;;
        --cores) cores=$2; shift 2 ;;
        --load) load=$2; shift 2 ;;
        *) echo "usage: $0 [--connections N] [--duration D] [--api kannel|jasmin|json] [--cores all|one] [--load bench|wrk]" >&2; exit 2 ;;
    esac
done
case "$cores" in all|one) ;; *) echo "--cores all|one" >&2; exit 2 ;; esac
case "$load" in bench|wrk) ;; *) echo "--load bench|wrk" >&2; exit 2 ;; esac
if [ "$load" = wrk ] && [ "$api" != kannel ]; then echo "--load wrk sends Kannel GETs only" >&2; exit 2; fi

for tool in nginx $( [ "$load" = wrk ] && echo wrk ); do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "installing $tool (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
    fi
done
cargo build --release --quiet
bin=target/release/relaylog
. benches/lib.sh
bench_setup

# Where each side runs: the proxies on core 1, the rest on core 0 (--cores one).
if [ "$cores" = one ]; then
    proxy=(taskset -c 1); rest=(taskset -c 0); workers=1; affinity="worker_cpu_affinity 10;"
else
    proxy=(); rest=(); workers=auto; affinity=""
fi


sim=$(port); ngx=$(port); nolog=$(port); floor=$(port); durable=$(port); async=$(port)
"${rest[@]}" "$bin" mock-gateway --listen "127.0.0.1:$sim" --api "$api" 2>"$work/sim.log" & pids+=($!)

# As Debian's package ships it (one worker per core), or one worker on core 1.
nginx_conf "$work/nginx" "$ngx" "$sim" "worker_processes $workers;" "$affinity"
"${proxy[@]}" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' & ngx_pid=$!
pids+=($ngx_pid)
# The same without its access log: what nginx's log line costs it.
nginx_conf --no-log "$work/nginx-nolog" "$nolog" "$sim" "worker_processes $workers;" "$affinity"
"${proxy[@]}" nginx -p "$work/nginx-nolog" -c "$work/nginx-nolog/nginx.conf" -g 'daemon off;' & nolog_pid=$!
pids+=($nolog_pid)
"${proxy[@]}" "$bin" bench passthrough --listen "127.0.0.1:$floor" --upstream "127.0.0.1:$sim" 2>"$work/floor.log" & floor_pid=$!
pids+=($floor_pid)
declare -A relay_pid

for mode in durable async; do
    p=${!mode}
    d="$work/$mode"
    mkdir -p "$d"
    { store_toml "$d"; cat <<CONF
durability = "$( [ "$mode" = durable ] && echo record-before-forward || echo async )"
[[listener]]
name = "sms"
listen = "127.0.0.1:$p"
profile = "$api"
upstream = "http://127.0.0.1:$sim"
CONF
} > "$d/relaylog.toml"
    "$bin" --config "$d/relaylog.toml" init >/dev/null
    "${proxy[@]}" "$bin" --config "$d/relaylog.toml" serve 2>"$d/serve.log" & relay_pid[$mode]=$!
    pids+=(${relay_pid[$mode]})
done
for p in "$sim" "$ngx" "$nolog" "$floor" "$durable" "$async"; do wait_port "$p"; done

# CPU ticks of a process and its children (nginx's workers).
tree_ticks() {
    local t=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(ticks "$p")))
    done
    echo "$t"
}
# Ticks, of them those in user space, context switches (voluntary and not, every
# thread), the machine's stolen ticks, and the ticks of relaylog's store threads (0
# for other processes): "ticks user switches steal store".
usage() {
    local c=0 t=0 u=0 w=0 p stat task
    for p in "$1" $(pgrep -P "$1" || true); do
        c=$((c + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s+0}')))
        # Both from one read of /proc/PID/stat, so that user <= total.
        stat=$(sed 's/.*) //' "/proc/$p/stat")
        t=$((t + $(awk '{print $12 + $13}' <<<"$stat")))
        u=$((u + $(awk '{print $12 + 0}' <<<"$stat")))
        for task in /proc/"$p"/task/*; do
            case "$(cat "$task/comm" 2>/dev/null)" in
                relaylog-writer|relaylog-journa*|relaylog-checkp*)
                    # A thread gone meanwhile counts 0.
                    w=$((w + $(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13} END {if (NR == 0) print 0}'))) ;;
            esac
        done
    done
    echo "$t $u $c $(steal) $w"
}
# Waits (at most 10 s) until a process has stopped working after a run: relaylog
# writes its deferred index entries and drains its queue once the load stops, and that
# work belongs to the run that caused it.
settle() {
    local a b
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        a=$(tree_ticks "$1"); sleep 1; b=$(tree_ticks "$1")
        [ $((b - a)) -le 1 ] && return 0
    done
    echo "process $1 still busy 10 s after its run" >&2
}
url_path="/cgi-bin/sendsms?username=bench&password=bench&from=BENCH&to=%2B31612345678&text=Your+code+is+123456"
run() { # name port [pid]
    local before after
    if [ -n "${3:-}" ]; then before=$(usage "$3"); else before="0 0 0 $(steal) 0"; fi
    if [ "$load" = wrk ]; then
        "${rest[@]}" wrk -t1 -c"$connections" -d"$duration" --latency "http://127.0.0.1:$2$url_path" > "$work/$1.wrk"
        python3 - "$work/$1.wrk" "$duration" > "$work/$1.json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = float(re.match(r"[\d.]+", v).group()), re.sub(r"[\d.]", "", v)
    return n * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
done = int(re.search(r"(\d+) requests in", text).group(1))
m = re.search(r"requests in ([\d.]+)(s|m|h)", text)
secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
non2xx = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errs = sum(int(x) for x in m.groups()) if m else 0
print(json.dumps({"requests_per_second": done / secs, "messages_per_second": (done - non2xx) / secs,
                  "messages": done - non2xx, "latency_ms": {"p50": ms(lat["50"]), "p99": ms(lat["99"])},
                  "errors": {"connect": 0, "io": errs, "timeout": 0, "status": {"non-2xx": non2xx}}}))
PY
    else
        "${rest[@]}" "$bin" bench http --target "http://127.0.0.1:$2" --api "$api" --connections "$connections" \
            --duration "$duration" --quiet --json > "$work/$1.json"
    fi
    if [ -n "${3:-}" ]; then settle "$3"; after=$(usage "$3"); else after="0 0 0 $(steal) 0"; fi
    echo "$before $after" > "$work/$1.usage"
}
run direct "$sim"; run nginx "$ngx" "$ngx_pid"; run nginx-nolog "$nolog" "$nolog_pid"; run floor "$floor" "$floor_pid"
run relaylog-durable "$durable" "${relay_pid[durable]}"; run relaylog-async "$async" "${relay_pid[async]}"
awk '/VmHWM/ {print $2}' "/proc/${relay_pid[durable]}/status" > "$work/rss"
# Who got how many threads: nginx's workers, the floor's thread, relaylog's HTTP threads
# (serve.http-threads = auto: one per core it may use), as they were during the run.
http_threads=$(cat /proc/"${relay_pid[durable]}"/task/*/comm 2>/dev/null | grep -c '^relaylog-http$' || true)
echo "nginx $(pgrep -c -P "$ngx_pid") worker process(es); floor 1 thread; relaylog $http_threads HTTP thread(s) (serve.http-threads = auto), its journal and writer threads (its runtime's workers idle: no SMTP or SMPP listener)" > "$work/threads"

# Added latency at half of nginx's saturating rate: open loop, same rate, direct and
# through relaylog (durable).
half_rate() { python3 -c 'import json,sys; print(max(1, int(json.load(open(sys.argv[1]))["requests_per_second"] / 2)))' "$work/$1.json"; }
half=$(half_rate nginx)
# The same at half of relaylog's own rate: what it adds to a client's latency when it
# is not near saturation (half of nginx's rate is most of relaylog's while it carries
# fewer messages/s than nginx).
own=$(half_rate relaylog-durable)
open_loop() { # name port rate
    local s0 s1
    s0=$(steal)
    "${rest[@]}" "$bin" bench http --target "http://127.0.0.1:$2" --api "$api" --connections "$connections" \
        --duration "$duration" --rate "$3" --quiet --json > "$work/$1.json"
    s1=$(steal)
    echo $((s1 - s0)) > "$work/$1.steal"
}
open_loop half-direct "$sim" "$half"; open_loop half-relaylog "$durable" "$half"
# The same rate through nginx and the floor: what any proxy adds to the tail on this
# machine, beside what relaylog adds.
open_loop half-nginx "$ngx" "$half"; open_loop half-floor "$floor" "$half"
open_loop own-direct "$sim" "$own"; open_loop own-relaylog "$durable" "$own"

python3 - "$work" "$connections" "$duration" "$api" "$(getconf CLK_TCK)" "$cores" "$load" <<'PY'
import json, os, sys
work, conns, duration, api, hz, cores, load = sys.argv[1:8]
hz = int(hz)
rows = {}
for name in ["direct", "nginx", "nginx-nolog", "floor", "relaylog-durable", "relaylog-async"]:
    rows[name] = json.load(open(os.path.join(work, name + ".json")))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
where = "each proxy on core 1 alone, load and simulator on core 0" if cores == "one" else "all cores shared with the load generator"
print(f"# {api}, {conns} connections, {duration} each, load {'wrk -t1' if load == 'wrk' else 'bench http'}; {os.cpu_count()} cores ({cpu}); {where}")
print(f"{'target':<18} {'messages/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU µs/msg':>11} {'user µs':>8} {'switches/msg':>13} {'stolen ms':>10}")
per_msg, user, store = {}, {}, {}
for name, r in rows.items():
    errors = r["errors"]["connect"] + r["errors"]["io"] + r["errors"]["timeout"] + sum(r["errors"]["status"].values())
    t0, u0, c0, s0, w0, t1, u1, c1, s1, w1 = map(int, open(os.path.join(work, name + ".usage")).read().split())
    msgs = r["messages"] if "messages" in r else r["messages_per_second"] * r["seconds"]
    per_msg[name] = (t1 - t0) / hz * 1e6 / msgs if t1 > t0 and msgs else None
    user[name] = (u1 - u0) / hz * 1e6 / msgs if t1 > t0 and msgs else None
    store[name] = (w1 - w0) / hz * 1e6 / msgs if msgs else None
    cpu_s = f"{per_msg[name]:.1f}" if per_msg[name] else "-"
    user_s = f"{user[name]:.1f}" if user[name] is not None else "-"
    sw_s = f"{(c1 - c0) / msgs:.2f}" if c1 > c0 and msgs else "-"
    print(f"{name:<18} {r['messages_per_second']:>11.0f} {r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f} {errors:>7} {cpu_s:>11} {user_s:>8} {sw_s:>13} {(s1 - s0) * 1000 // hz:>10}")
print(open(os.path.join(work, "threads")).read().strip())
def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"
n, f, d, a = (rows[k]["messages_per_second"] for k in ["nginx", "floor", "relaylog-durable", "relaylog-async"])
print(f"messages/s: durable / nginx {ratio(d, n)} (target >= 1.0)   floor / nginx {ratio(f, n)}   durable / async {ratio(d, a)} (target >= 0.9)")
c = per_msg
extra = f"{c['relaylog-durable'] - c['floor']:.1f} µs" if c["relaylog-durable"] and c["floor"] else "-"
print(f"CPU per message: durable / nginx {ratio(c['relaylog-durable'], c['nginx'])} (target <= 1.2)   "
      f"floor / nginx {ratio(c['floor'], c['nginx'])}   durable - floor {extra}")
# What the ratio is made of: the floor proxies and records nothing; nginx proxies and
# writes a log line; relaylog proxies and records. CPU per message at nginx's (1.0, which
# on one core is also nginx's messages/s) needs what relaylog adds to the floor to cost
# no more than nginx - floor.
if all(c[k] for k in ("nginx", "nginx-nolog", "floor", "relaylog-durable")):
    print(f"recording against logging: durable - floor {c['relaylog-durable'] - c['floor']:.1f} µs, of which relaylog's store threads "
          f"{store['relaylog-durable']:.1f} µs; nginx - nginx without its log {c['nginx'] - c['nginx-nolog']:.1f} µs; "
          f"durable <= nginx needs durable - floor <= nginx - floor = {c['nginx'] - c['floor']:.1f} µs")
rss = int(open(os.path.join(work, "rss")).read()) / 1024
if all(user[k] is not None for k in ("nginx", "floor", "relaylog-durable")):
    k = lambda name: per_msg[name] - user[name]
    print(f"of which in the kernel: nginx {k('nginx'):.1f} µs, floor {k('floor'):.1f} µs, durable {k('relaylog-durable'):.1f} µs; "
          f"in user space: nginx {user['nginx']:.1f} µs, floor {user['floor']:.1f} µs, durable {user['relaylog-durable']:.1f} µs")
print(f"relaylog durable peak RSS: {rss:.0f} MiB (target < 100)")
for prefix, whose in (("half", "nginx's"), ("own", "relaylog's own")):
    # The targets are set at half of nginx's rate; the other runs are for comparison.
    hd = json.load(open(os.path.join(work, prefix + "-direct.json")))
    hr = json.load(open(os.path.join(work, prefix + "-relaylog.json")))
    sd = int(open(os.path.join(work, prefix + "-direct.steal")).read()) * 1000 // hz
    sr = int(open(os.path.join(work, prefix + "-relaylog.steal")).read()) * 1000 // hz
    for q, target in (("p99", 2), ("p99_9", 10)):
        print(f"open loop at half of {whose} rate ({hr['requests_per_second']:.0f} req/s): {q} direct {hd['latency_ms'][q]:.2f} ms, "
              f"through relaylog {hr['latency_ms'][q]:.2f} ms, added {hr['latency_ms'][q] - hd['latency_ms'][q]:.2f} ms"
              + (f" (target <= {target})" if prefix == "half" else ""))
    print(f"  (stolen during those runs: {sd} and {sr} ms)")
    if prefix == "half":
        for other in ("nginx", "floor"):
            ho = json.load(open(os.path.join(work, f"half-{other}.json")))
            so = int(open(os.path.join(work, f"half-{other}.steal")).read()) * 1000 // hz
            print(f"  the same rate through {other}: p99 added {ho['latency_ms']['p99'] - hd['latency_ms']['p99']:.2f} ms, "
                  f"p99_9 added {ho['latency_ms']['p99_9'] - hd['latency_ms']['p99_9']:.2f} ms (stolen {so} ms)")
PY
