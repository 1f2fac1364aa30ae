# Shell helpers the bench scripts share; sourced, not run.

# Empty arrays ("${pids[@]}") under set -u need bash 4.4.
(( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404 )) || { echo "$0 needs bash 4.4 or later" >&2; exit 2; }

# A scratch directory ($work) and the background processes to stop ($pids), both
# cleaned up when the script exits.
bench_setup() {
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 10 s) until something listens on a loopback port.
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

# CPU ticks (utime + stime: fields 14 and 15 of /proc/PID/stat, counted after the
# command name, which may hold spaces) of a process.
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# CPU ticks the hypervisor has stolen from this machine so far (/proc/stat).
steal() { awk '/^cpu / {print $9}' /proc/stat; }

# The [store] section of a relaylog configuration keeping everything under $1.
store_toml() {
    cat <<CONF
[store]
path = "$1/store"
keyring = "$1/keys/keyring"
master-key = "$1/keys/master.key"
signing-key = "$1/keys/signing.key"
ledger = "$1/ledger.sqlite"
CONF
}
