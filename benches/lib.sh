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

# An nginx configuration in $1 (with its logs/ there) of a reverse proxy on port $2 in
# front of the gateway simulator on port $3: keep-alive upstream, an access log of
# request metadata (none with --no-log first). Lines for the main context come after
# the arguments (workers, affinity).
nginx_conf() {
    local log=on
    if [ "$1" = --no-log ]; then log=off; shift; fi
    local dir=$1 listen=$2 sim=$3 access; shift 3
    if [ "$log" = on ]; then access="access_log $dir/logs/access.log meta;"; else access="access_log off;"; fi
    mkdir -p "$dir/logs"
    { printf '%s\n' "$@"; cat <<CONF
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
    log_format meta '\$remote_addr:\$remote_port [\$time_iso8601] "\$request_method \$uri" \$status \$request_length \$upstream_response_time';
    $access
    upstream gateway { server 127.0.0.1:$sim; keepalive 64; }
    server {
        listen 127.0.0.1:$listen;
        location / {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
    } > "$dir/nginx.conf"
}
