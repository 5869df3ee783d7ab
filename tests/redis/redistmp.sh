#!/usr/bin/env bash
# redistmp.sh — a throwaway Redis for tests and the demo, from Debian's redis-server package,
# on loopback in a directory of the caller's choosing. Nothing is persisted (no RDB, no AOF).
#
#   redistmp.sh start DIR [PORT]   start (daemonized, pidfile DIR/redis.pid); prints 127.0.0.1:PORT
#   redistmp.sh stop DIR           SHUTDOWN NOSAVE, waits for the process to exit
#   redistmp.sh kill DIR           SIGKILL (crash-like)
#   redistmp.sh addr DIR           prints 127.0.0.1:PORT of a started server
#
# Redis runs as whoever calls it, root included, so DIR may be anywhere the caller can write
# (a checkout under /root, mode 0700, too). PORT defaults to the port of the last start in
# DIR, else a free one.
#
# REDISTMP_PASSWORD=PASS in the environment of `start` makes the server require it (AUTH
# PASS; set in DIR/auth.conf, mode 0600, not on the server's command line); unset, the password
# of the last start in DIR (none if it had none); empty, none. stop and the start's PING
# authenticate with it (REDISCLI_AUTH).
set -euo pipefail

die() { echo "redistmp: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: redistmp.sh start|stop|kill|addr DIR [PORT]"
cmd=$1 dir=$2 port=${3:-}
. "$(dirname "${BASH_SOURCE[0]}")/../lib/throwaway.sh" # tw_free_port

server=$(command -v redis-server) || die "no redis-server (apt-get install redis-server)"
cli=$(command -v redis-cli) || die "no redis-cli (apt-get install redis-tools)"

# The password of the server in DIR ("" for none): DIR/password, written by start.
password() { cat "$dir/password" 2>/dev/null || true; }

# redis-cli on the server's port, authenticated when it has a password.
rcli() {
  local pass
  pass=$(password)
  if [ -n "$pass" ]; then REDISCLI_AUTH=$pass "$cli" -h 127.0.0.1 -p "$port" "$@"
  else "$cli" -h 127.0.0.1 -p "$port" "$@"; fi
}

# Writes DIR/password and DIR/auth.conf (both 0600) from REDISTMP_PASSWORD when it is set;
# prints the server's config file argument (DIR/auth.conf, or nothing without a password).
auth_conf() {
  if [ -n "${REDISTMP_PASSWORD+set}" ]; then
    case "$REDISTMP_PASSWORD" in *'"'* | *\\* | *$'\n'*) die "REDISTMP_PASSWORD: no quotes, backslashes or newlines" ;; esac
    rm -f "$dir/password" "$dir/auth.conf"
    if [ -n "$REDISTMP_PASSWORD" ]; then
      (umask 077 && printf '%s' "$REDISTMP_PASSWORD" >"$dir/password" &&
        printf 'requirepass "%s"\n' "$REDISTMP_PASSWORD" >"$dir/auth.conf")
    fi
  fi
  if [ -f "$dir/auth.conf" ]; then echo "$dir/auth.conf"; fi
}

running_pid() {
  local pid
  pid=$(cat "$dir/redis.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

wait_gone() {
  local pid=$1 i
  for i in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/redis.pid"; return 0; }
    sleep 0.05
  done
  die "redis-server (pid $pid) did not exit"
}

case "$cmd" in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if pid=$(running_pid); then die "a server is already running in $dir (pid $pid)"; fi
  [ -n "$port" ] || port=$(cat "$dir/port" 2>/dev/null || tw_free_port)
  echo "$port" >"$dir/port"
  rm -f "$dir/redis.pid"
  conf=$(auth_conf)
  "$server" ${conf:+"$conf"} --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' --appendonly no \
    --unixsocket '' >/dev/null || { tail -20 "$dir/redis.log" >&2 2>/dev/null; die "redis-server failed"; }
  for _ in $(seq 1 200); do
    if [ "$(rcli ping 2>/dev/null)" = PONG ]; then
      echo "127.0.0.1:$port"
      exit 0
    fi
    sleep 0.05
  done
  tail -20 "$dir/redis.log" >&2 2>/dev/null || true
  die "redis-server on 127.0.0.1:$port did not answer PING"
  ;;
stop)
  pid=$(running_pid) || exit 0
  port=$(cat "$dir/port")
  rcli shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  wait_gone "$pid"
  ;;
kill)
  pid=$(running_pid) || exit 0
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid"
  ;;
addr)
  [ -f "$dir/port" ] || die "no server in $dir"
  echo "127.0.0.1:$(cat "$dir/port")"
  ;;
*)
  die "unknown command $cmd"
  ;;
esac
