#!/usr/bin/env bash
# relaylog durable (`record-before-forward`) with the SQLite store and with the
# PostgreSQL store, under the same load, alternating rounds: messages/s, serve's CPU per
# message (with its user and system shares and its threads' context switches) and
# PostgreSQL's (every server process, utime + stime from /proc/PID/stat),
# and the ratio issue 16 sets (PostgreSQL ÷ SQLite messages/s ≥ 0.8). PostgreSQL twice:
# answering from the database (`postgres`, the default) and from the node's journal
# (`pg-journal`, `store.acknowledge = "journal"`, as the SQLite store answers).
#
#   benches/postgres.sh [--rounds N] [--duration 10s] [--connections 64] [BINARY]
#
# PostgreSQL: a private cluster made here (initdb of the system's PostgreSQL; as root
# it runs as nobody) on a Unix socket, durable and with the memory settings of
# `relaylog bench store --backend postgres` (src/bench/pgcluster.rs). The load is
# `bench http` (Kannel GET, one recipient) against the built-in simulator. Loopback
# only.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
rounds=3 duration=10s connections=64
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        *) break ;;
    esac
done
bin=${1:-target/release/relaylog}
[ -x "$bin" ] || { echo "no $bin: cargo build --release" >&2; exit 2; }
pgbin=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 2; }
bench_setup
tck=$(getconf CLK_TCK)
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(setpriv --reuid=nobody --regid=nogroup --clear-groups); fi

# The cluster.
pg=$work/pg
mkdir -p "$pg"
password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$password" > "$pg/pwfile"
if [ "$(id -u)" = 0 ]; then
    chmod 711 "$work"    # nobody passes through the scratch directory to its cluster
    chown -R nobody:nogroup "$pg"
fi
"${as_pg[@]}" "$pgbin/initdb" -D "$pg/data" -U relaylog --pwfile "$pg/pwfile" --auth scram-sha-256 \
    --encoding UTF8 --no-instructions >/dev/null
settings=$(sed -n '/^pub const SETTINGS/,/";$/p' src/bench/pgcluster.rs | sed 's/.*= "//; s/";$//; s/\\n\\$//; s/\\n/\n/g; s/\\$//')
printf "\nlisten_addresses = ''\nunix_socket_directories = '%s'\n%s\n" "$pg" "$settings" >> "$pg/data/postgresql.conf"
echo "local all all scram-sha-256" > "$pg/data/pg_hba.conf"
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pg/data" -l "$pg/log" -w start >/dev/null
stop_pg() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pg/data" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'stop_pg; bench_cleanup' EXIT
echo "$password" > "$work/pg-password"
postmaster=$(head -1 "$pg/data/postmaster.pid")
# Ticks of every PostgreSQL process (the postmaster's children come and go).
pg_ticks() {
    local sum=0 p
    for p in $postmaster $(pgrep -P "$postmaster"); do
        [ -r "/proc/$p/stat" ] && sum=$((sum + $(ticks "$p")))
    done
    echo "$sum"
}

# Of a process: its user and system ticks (/proc/PID/stat, exited threads included),
# and the context switches (voluntary and not) of the threads it still has.
threads() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{printf "%d %d ", $12, $13}'
    { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/ctxt_switches/ {c += $2} END {print c + 0}'
}

run() {
    local backend=$1 dir=$work/$1-$2 pid t0 t1 p0 p1 out db=
    mkdir -p "$dir"
    {
        store_toml "$dir"
        if [ "$backend" != sqlite ]; then
            # A database per round: each round's node has keys of its own.
            db=bench_${backend//-/_}_$2 ack=database
            [ "$backend" = pg-journal ] && ack=journal
            PGPASSWORD=$password "$pgbin/createdb" -h "$pg" -U relaylog "$db"
            cat <<T
backend = "postgres"
url = "host=$pg user=relaylog dbname=$db"
password-file = "$work/pg-password"
node = "bench-$2"
acknowledge = "$ack"
T
        fi
        cat <<T
[[listener]]
name = "relay"
listen = "127.0.0.1:18080"
profile = "kannel"
[admin]
listen = "127.0.0.1:18090"
[log]
level = "warn"
T
    } > "$dir/c.toml"
    "$bin" --config "$dir/c.toml" init >/dev/null
    "$bin" --config "$dir/c.toml" serve 2>"$dir/err" &
    pid=$!
    wait_port 18080
    t0=$(ticks "$pid") p0=$(pg_ticks) s0=$(threads "$pid")
    out=$("$bin" bench http --target http://127.0.0.1:18080 --connections "$connections" --duration "$duration" --json --quiet)
    t1=$(ticks "$pid") p1=$(pg_ticks) s1=$(threads "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # Gone before the next round: autovacuum's passes over a finished round's tables
    # would be counted as the next round's PostgreSQL CPU, and take its cores.
    [ "$backend" = sqlite ] || PGPASSWORD=$password "$pgbin/dropdb" -h "$pg" -U relaylog "$db"
    python3 - "$backend" "$out" "$t0" "$t1" "$p0" "$p1" "$tck" "$s0" "$s1" <<'P'
import json, sys
name, out = sys.argv[1], json.loads(sys.argv[2])
t0, t1, p0, p1, tck = map(int, sys.argv[3:8])
(u0, y0, c0), (u1, y1, c1) = (map(int, a.split()) for a in sys.argv[8:10])
n = max(out["ok"], 1)
serve, pgcpu = (t1 - t0) / tck, (p1 - p0) / tck
print(f"{name:10} {out['messages_per_second']:8.0f} msg/s  serve {serve / n * 1e6:5.1f} us/msg "
      f"(user {(u1 - u0) / tck / n * 1e6:4.1f}, system {(y1 - y0) / tck / n * 1e6:4.1f}, "
      f"{(c1 - c0) / n:4.2f} switches)  postgres {pgcpu / n * 1e6:5.1f} us/msg  errors {out['errors']}")
P
}

echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'): $(echo "$settings" | tr '\n' ' ')"
for r in $(seq "$rounds"); do
    run sqlite "$r"
    run postgres "$r"
    run pg-journal "$r"
done | tee "$work/results"
python3 - "$work/results" <<'P'
import sys
rates = {"sqlite": [], "postgres": [], "pg-journal": []}
for line in open(sys.argv[1]):
    f = line.split()
    rates[f[0]].append(float(f[1]))
s, p, j = (sum(rates[k]) / len(rates[k]) for k in ("sqlite", "postgres", "pg-journal"))
print(f"mean: sqlite {s:.0f} msg/s, postgres {p:.0f} msg/s (answering from the database), "
      f"{j:.0f} msg/s (from the journal): postgres / sqlite = {p / s:.2f} and {j / s:.2f} (target >= 0.8)")
P
