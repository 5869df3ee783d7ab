#!/usr/bin/env bash
# pgtmp.sh — a throwaway PostgreSQL for tests, benchmarks and the demo, from Debian's
# postgresql package, on loopback in a directory of the caller's choosing.
#
#   pgtmp.sh start DIR [PORT]   initdb (once) and start; prints the libpq conninfo on stdout
#   pgtmp.sh stop DIR           fast shutdown (waits)
#   pgtmp.sh kill DIR           immediate shutdown (crash-like; recovery on next start)
#   pgtmp.sh conninfo DIR       prints the conninfo of a started server
#
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the
# Debian package creates, and DIR is handed to it. The database `avlgate` (owner `avlgate`,
# trust auth on loopback only) is created on first start. PORT defaults to a free port.
set -euo pipefail

die() { echo "pgtmp: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: pgtmp.sh start|stop|kill|conninfo DIR [PORT]"
cmd=$1 dir=$2 port=${3:-}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] && [ -x "$bindir/initdb" ] || die "no PostgreSQL server binaries (apt-get install postgresql)"

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

conninfo() { echo "host=127.0.0.1 port=$(cat "$dir/port") dbname=avlgate user=avlgate"; }

case "$cmd" in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 256MB
fsync = off
full_page_writes = off
synchronous_commit = on
max_wal_size = 4GB
log_min_messages = warning
log_line_prefix = '%m [%p] '
CONF
    new=1
  fi
  [ -n "$port" ] || port=$(cat "$dir/port" 2>/dev/null || free_port)
  echo "$port" >"$dir/port"
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 60 start >/dev/null \
    || { tail -20 "$dir/server.log" >&2; die "pg_ctl start failed"; }
  if [ "${new:-0}" = 1 ]; then
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
      -c "CREATE ROLE avlgate LOGIN SUPERUSER" -c "CREATE DATABASE avlgate OWNER avlgate" >/dev/null
  fi
  conninfo
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  ;;
kill)
  [ -f "$dir/data/postmaster.pid" ] || exit 0
  as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null
  ;;
conninfo)
  [ -f "$dir/port" ] || die "no server in $dir"
  conninfo
  ;;
*)
  die "unknown command $cmd"
  ;;
esac
