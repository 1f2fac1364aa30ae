#!/usr/bin/env bash
# The SMTP relay side by side, in one run, with the same load on the same cores:
#   (a) the sink MTA directly, (b) relaylog (durable, record before forward) in front
#   of it, each loaded by `relaylog bench smtp` and by Postfix's `smtp-source`; and
#   (c) socat forwarding bytes to the sink, the ceiling of any relay that adds a hop on
#   these cores; (d) a private Postfix instance relaying the same mail to the sink (smtpd -> queue
#   -> smtp) with its envelope logged (from=, to=, status= in its maillog).
# Prints messages/s, and CPU per message (utime + stime from /proc/PID/stat) of
# relaylog and of every Postfix process, and the two ratios the target is stated in:
#   relaylog / direct messages/s (target >= 0.9), relaylog / Postfix CPU per message
#   (target < 1).
#
#   benches/smtp.sh [--sessions 20] [--duration 10s] [--size 2048] [--recipients 1]
#
# Loopback only; needs root (Postfix runs as its own user from a temporary
# config_directory). postfix is installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=20
duration=10s
size=2048
recipients=1
per_session=100
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) sessions=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --recipients) recipients=$2; shift 2 ;;
        *) echo "usage: $0 [--sessions N] [--duration D] [--size BYTES] [--recipients N]" >&2; exit 2 ;;
    esac
done

if ! command -v postfix >/dev/null 2>&1 || ! command -v smtp-source >/dev/null 2>&1 \
    || ! command -v socat >/dev/null 2>&1; then
    echo "installing postfix and socat (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends postfix socat >/dev/null
fi
cargo build --release --quiet
bin=target/release/relaylog
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

. benches/lib.sh
# CPU ticks of a process and its live descendants, plus the reaped children its
# kernel accounting holds (cutime + cstime): Postfix's master reaps its daemons.
ticks() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
stat = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stat[int(p)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
total, todo = stat[root][2], [root]
while todo:
    p = todo.pop()
    total += stat[p][1]
    todo += [c for c, s in stat.items() if s[0] == p]
print(total)
PY
}

sink=$(port); relay=$(port); pfx=$(port); null=$(port)
"$bin" mock-gateway --listen "127.0.0.1:$sink" --api smtp 2>"$work/sink.log" & sink_pid=$!
pids+=($sink_pid)

socat "TCP-LISTEN:$null,bind=127.0.0.1,fork,reuseaddr,backlog=1024" "TCP:127.0.0.1:$sink,nodelay" & socat_pid=$!
pids+=($socat_pid)

d="$work/relaylog"
mkdir -p "$d"
cat > "$d/relaylog.toml" <<CONF
[store]
path = "$d/store"
keyring = "$d/keys/keyring"
master-key = "$d/keys/master.key"
signing-key = "$d/keys/signing.key"
ledger = "$d/ledger.sqlite"
[[listener]]
name = "mail"
protocol = "smtp"
listen = "127.0.0.1:$relay"
upstream = "smtp://127.0.0.1:$sink"
max-connections = 1024
CONF
"$bin" --config "$d/relaylog.toml" init >/dev/null
"$bin" --config "$d/relaylog.toml" serve 2>"$d/serve.log" & relay_pid=$!
pids+=($relay_pid)

p="$work/postfix"
mkdir -p "$p/etc" "$p/queue" "$p/data"
cat > "$p/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $p/queue
data_directory = $p/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.relaylog.test
mydestination =
relayhost = [127.0.0.1]:$sink
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
maillog_file = $p/maillog
maillog_file_prefixes = $p
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
default_process_limit = $((sessions * 2 + 10))
CONF
{
    echo "127.0.0.1:$pfx inet n - n - - smtpd"
    for s in "pickup n 60 1 pickup" "cleanup n - 0 cleanup" "qmgr n 300 1 qmgr" \
             "rewrite - - - trivial-rewrite" "bounce - - 0 bounce" "defer - - 0 bounce" \
             "trace - - 0 bounce" "verify - - 1 verify" "flush n - 0 flush" \
             "proxymap - - - proxymap" "smtp - - - smtp" "relay - - - smtp" \
             "showq n - - showq" "error - - - error" "retry - - - error" \
             "discard - - - discard" "anvil - - 1 anvil" "scache - - 1 scache"; do
        set -- $s
        echo "$1 unix $2 - n $3 $4 $5"
    done
    echo "postlog unix-dgram n - n - 1 postlogd"
} > "$p/etc/master.cf"
chown postfix "$p/data"
postfix -c "$p/etc" start >/dev/null 2>&1
for x in "$sink" "$relay" "$pfx" "$null"; do wait_port "$x"; done
postfix_pid=$(tr -d ' ' < "$p/queue/pid/master.pid")

bench() { # name port
    "$bin" bench smtp --target "127.0.0.1:$2" --sessions "$sessions" --duration "$duration" \
        --messages-per-session "$per_session" --recipients "$recipients" --size "$size" \
        --quiet --json > "$work/$1.json"
}
source_run() { # name port messages
    local t0 t1
    t0=$(date +%s.%N)
    smtp-source -d -s "$sessions" -m "$3" -l "$size" -r "$recipients" -N \
        -f bench@relaylog.test -t user@example.net "127.0.0.1:$2"
    t1=$(date +%s.%N)
    python3 -c "import json,sys; print(json.dumps({'messages_per_second': $3 / ($t1 - $t0), 'ok': $3}))" \
        > "$work/$1.json"
}
cpu() { # name pid command...
    local name=$1 pid=$2 t0 t1
    shift 2
    t0=$(ticks "$pid")
    "$@"
    t1=$(ticks "$pid")
    echo $((t1 - t0)) > "$work/$name.ticks"
}

bench warmup "$relay"
cpu bench-direct "$sink_pid" bench bench-direct "$sink"
cpu bench-relaylog "$relay_pid" bench bench-relaylog "$relay"
cpu bench-socat "$socat_pid" bench bench-socat "$null"
# smtp-source sends a count, not a duration: as many as bench smtp sent directly.
count=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['ok'])" "$work/bench-direct.json")
cpu source-direct "$sink_pid" source_run source-direct "$sink" "$count"
cpu source-relaylog "$relay_pid" source_run source-relaylog "$relay" "$count"
cpu bench-postfix "$postfix_pid" bench bench-postfix "$pfx"
# Postfix's queue drains after smtpd has said 250: wait for it, counting its CPU.
t0=$(ticks "$postfix_pid")
for _ in $(seq 600); do
    [ -z "$(find "$p/queue/active" "$p/queue/incoming" "$p/queue/deferred" -type f 2>/dev/null | head -1)" ] && break
    sleep 0.1
done
t1=$(ticks "$postfix_pid")
echo $(( $(cat "$work/bench-postfix.ticks") + t1 - t0 )) > "$work/bench-postfix.ticks"
sent=$(grep -c 'status=sent' "$p/maillog" || true)

python3 - "$work" "$sessions" "$duration" "$size" "$recipients" "$per_session" "$(getconf CLK_TCK)" "$sent" <<'PY'
import json, os, sys
work, sessions, duration, size, rcpts, per_session, hz, sent = sys.argv[1:9]
hz = int(hz)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# {sessions} sessions, {size}-byte messages, {rcpts} recipient(s); bench smtp {duration} per run, "
      f"{per_session} messages per session; smtp-source -d (one session per connection, as many messages as bench smtp sent directly)")
print(f"# {os.cpu_count()} cores ({cpu}); load generators, sink, relaylog and Postfix on the same cores")
def load(name):
    r = json.load(open(os.path.join(work, name + ".json")))
    t = os.path.join(work, name + ".ticks")
    us = None
    if os.path.exists(t) and r["ok"]:
        us = int(open(t).read()) / hz * 1e6 / r["ok"]
    return r, us
print(f"{'path':<34} {'messages/s':>11} {'ok':>8} {'CPU µs/msg':>11}  (CPU of)")
rows = {}
for name, label, of in [
    ("bench-direct", "bench smtp -> sink", "sink"),
    ("bench-relaylog", "bench smtp -> relaylog -> sink", "relaylog"),
    ("bench-socat", "bench smtp -> socat -> sink", "socat"),
    ("source-direct", "smtp-source -> sink", "sink"),
    ("source-relaylog", "smtp-source -> relaylog -> sink", "relaylog"),
    ("bench-postfix", "bench smtp -> Postfix -> sink", "all Postfix processes"),
]:
    r, us = load(name)
    rows[name] = (r, us)
    print(f"{label:<34} {r['messages_per_second']:>11.0f} {r['ok']:>8} {us if us is not None else float('nan'):>11.1f}  ({of})")
ratio = lambda a, b: rows[a][0]["messages_per_second"] / rows[b][0]["messages_per_second"]
print(f"socat (a relay that only copies bytes) / direct messages/s: {ratio('bench-socat', 'bench-direct'):.2f}x; "
      f"relaylog / socat: {ratio('bench-relaylog', 'bench-socat'):.2f}x")
print(f"relaylog / direct messages/s: bench smtp {ratio('bench-relaylog', 'bench-direct'):.2f}x, "
      f"smtp-source {ratio('source-relaylog', 'source-direct'):.2f}x   (target >= 0.90)")
print(f"relaylog / Postfix CPU per message: {rows['bench-relaylog'][1] / rows['bench-postfix'][1]:.2f}x   (target < 1; "
      f"Postfix logged {sent} deliveries as status=sent of {rows['bench-postfix'][0]['ok']} accepted)")
PY
