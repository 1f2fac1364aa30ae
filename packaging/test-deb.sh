#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on this machine and checks what
# it installed: the relaylog user, its directories and keys with their modes, the
# configuration, the service unit and its `systemd-analyze security` exposure (at most
# 2.0), then runs `serve` as that user with that configuration (not inside the unit's
# sandbox, which needs systemd running) long enough to relay one message and answer
# /healthz, and removes the package again (its data and configuration stay, as Debian's `remove` leaves
# them; --purge-data purges the package and deletes /var/lib/relaylog and the user).
#
#   packaging/test-deb.sh [--purge-data]
#
# Needs root (dpkg), cargo-deb (`cargo install cargo-deb --version 3.8.0 --locked`),
# systemd-analyze, setpriv and curl; installs a package system-wide, so it refuses a
# machine where relaylog is installed, its user or /var/lib/relaylog exists, or its
# ports are taken: for CI and throwaway machines.
set -euo pipefail
cd "$(dirname "$0")/.."
purge=no
[ "${1:-}" = --purge-data ] && purge=yes
[ "$(id -u)" -eq 0 ] || { echo "$0 needs root (it installs a package)" >&2; exit 1; }
for tool in cargo-deb systemd-analyze curl dpkg setpriv; do
    command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done

fail() { echo "test-deb: $*" >&2; exit 1; }
mode_owner() { stat -c '%a %U:%G' "$1"; }
expect() { # what path "mode user:group"
    [ -e "$2" ] || fail "$1 $2 is missing"
    [ "$(mode_owner "$2")" = "$3" ] || fail "$1 $2 is $(mode_owner "$2"), expected $3"
}

# Never on a machine that runs relaylog: this installs, runs and removes it.
dpkg -s relaylog >/dev/null 2>&1 && fail "relaylog is installed here already: not on this machine"
getent passwd relaylog >/dev/null && fail "a relaylog user exists here already: not on this machine"
[ -e /var/lib/relaylog ] && fail "/var/lib/relaylog exists here already: not on this machine"
for p in 13080 13090; do
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && fail "port $p is taken: the packaged configuration listens there"
done

log=$(mktemp)
serve_pid=
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    if [ "$purge" = yes ]; then
        dpkg --purge relaylog >/dev/null 2>&1 || true
        rm -rf /var/lib/relaylog
        deluser --system relaylog >/dev/null 2>&1 || true
    else
        dpkg -r relaylog >/dev/null 2>&1 || true
    fi
    rm -f "$log"
}
trap cleanup EXIT

deb=$(cargo deb --locked 2>/dev/null | tail -1)
[ -f "$deb" ] || fail "cargo deb made no package"
echo "built $deb ($(du -h "$deb" | cut -f1))"
dpkg -i "$deb" >/dev/null

getent passwd relaylog >/dev/null || fail "no relaylog user"
[ "$(getent passwd relaylog | cut -d: -f7)" != /bin/bash ] || fail "the relaylog user has a login shell"
expect binary /usr/bin/relaylog "755 root:root"
expect "top directory" /var/lib/relaylog "750 root:relaylog"
expect config /etc/relaylog/relaylog.toml "640 root:relaylog"
for d in /var/lib/relaylog/store /var/lib/relaylog/keys /var/lib/relaylog/keys/keyring /var/lib/relaylog/ledger; do
    expect directory "$d" "700 relaylog:relaylog"
done
expect "master key" /var/lib/relaylog/keys/master.key "600 relaylog:relaylog"
expect "signing key" /var/lib/relaylog/keys/signing.key "600 relaylog:relaylog"
unit=$(dpkg -L relaylog | grep '/systemd/system/relaylog.service$') || fail "no unit installed"
systemctl is-enabled relaylog >/dev/null 2>&1 && fail "the unit is enabled before it is configured"
score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | awk '/Overall exposure level/ {print $(NF-2)}')
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "exposure $score above 2.0"
echo "systemd-analyze security: exposure $score"
# A second configure (an upgrade) keeps the keys.
key=$(sha256sum /var/lib/relaylog/keys/master.key)
dpkg-reconfigure relaylog >/dev/null 2>&1 || dpkg -i "$deb" >/dev/null
[ "$(sha256sum /var/lib/relaylog/keys/master.key)" = "$key" ] || fail "reinstalling replaced the master key"

# serve as the unit runs it (as relaylog, from /var/lib/relaylog; not under systemd's
# sandbox, which needs systemd running: the unit's sandbox is scored above, not run).
runuser -u relaylog -- /usr/bin/relaylog --config /etc/relaylog/relaylog.toml check-config >/dev/null
cd /var/lib/relaylog
setpriv --reuid=relaylog --regid=relaylog --init-groups \
    /usr/bin/relaylog --config /etc/relaylog/relaylog.toml serve >"$log" 2>&1 &
serve_pid=$!
cd - >/dev/null
for _ in $(seq 50); do curl -fsS http://127.0.0.1:13090/healthz >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS http://127.0.0.1:13090/healthz >/dev/null || { cat "$log" >&2; fail "serve did not come up"; }
status=$(curl -s -o /dev/null -w '%{http_code}' \
    'http://127.0.0.1:13080/cgi-bin/sendsms?username=deb&password=test&to=%2B31612345678&text=hi')
[ "$status" = 202 ] || fail "a message through the installed relay got $status"
recorded=no
for _ in $(seq 50); do
    metrics=$(curl -fsS http://127.0.0.1:13090/metrics || true)
    grep -q '^relaylog_records_written_total 1$' <<<"$metrics" && { recorded=yes; break; }
    sleep 0.2
done
[ "$recorded" = yes ] || fail "the message was not recorded"
# The unit's reload: the file checked, then SIGHUP; serve reloads and goes on.
runuser -u relaylog -- /usr/bin/relaylog --config /etc/relaylog/relaylog.toml check-config >/dev/null
kill -HUP "$serve_pid"
reloaded=no
for _ in $(seq 50); do
    grep -q '^relaylog_reloads_total{result="applied"} 1$' <<<"$(curl -fsS http://127.0.0.1:13090/metrics || true)" \
        && { reloaded=yes; break; }
    sleep 0.2
done
[ "$reloaded" = yes ] || { cat "$log" >&2; fail "SIGHUP did not reload"; }
kill -TERM "$serve_pid"
wait "$serve_pid" || fail "serve did not stop cleanly on SIGTERM"
serve_pid=
echo "test-deb: ok"
