#!/usr/bin/env bash
# pgtmp.sh — a throwaway PostgreSQL for tests, benchmarks and the demo, from Debian's
# postgresql package, on loopback, kept in a directory of the caller's choosing.
#
#   pgtmp.sh start DIR [PORT]   initdb (once) and start; prints the libpq conninfo on stdout
#   pgtmp.sh stop DIR           fast shutdown (waits); the data stays for the next start
#   pgtmp.sh kill DIR           immediate shutdown (crash-like; recovery on next start)
#   pgtmp.sh remove DIR         stop if running, then delete the server's files, and DIR if
#                               nothing else is in it
#   pgtmp.sh conninfo DIR       prints the conninfo of a started server
#
# PostgreSQL refuses to run as root: as root the server runs as the `postgres` user the
# Debian package creates, and its files must be where that user can reach them:
#   - DIR itself when `postgres` can reach DIR's parent (it may search every directory on the
#     way): DIR is handed to postgres and holds data/, server.log, initdb.log and the socket;
#   - otherwise (a checkout under /root, which is mode 0700, say): a private directory
#     /var/tmp/avlgate-pgtmp.XXXXXX, owned by postgres, mode 0700, holding the same files.
#     DIR stays the caller's and holds only `rundir` (that directory's path) and `port`, so
#     stop, kill, remove and conninfo find the server; stop and kill keep the private
#     directory (the next start finds the data), remove deletes it. The first start says
#     where it is on stderr. No permission of DIR's parents is changed.
# DIR/port holds the port; PORT defaults to the port of the last start in DIR, else a free
# one. The database `avlgate` (owner `avlgate`, trust auth on loopback only) is created on
# first start.
set -euo pipefail

die() { echo "pgtmp: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: pgtmp.sh start|stop|kill|remove|conninfo DIR [PORT]"
cmd=$1 dir=$2 port=${3:-}
. "$(dirname "${BASH_SOURCE[0]}")/../lib/throwaway.sh" # tw_free_port

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] && [ -x "$bindir/initdb" ] || die "no PostgreSQL server binaries (apt-get install postgresql)"

is_root() { [ "$(id -u)" -eq 0 ]; }

# As postgres when we are root, from / (the caller's working directory may be out of its reach).
as_pg() {
  if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

conninfo() { echo "host=127.0.0.1 port=$(cat "$dir/port") dbname=avlgate user=avlgate"; }

# Where the server's files are: the private directory DIR/rundir names, else DIR. Only a path
# of the shape this script makes is taken (remove deletes it as root).
rundir() {
  local r
  [ -f "$dir/rundir" ] || { echo "$dir"; return 0; }
  r=$(cat "$dir/rundir")
  [[ $r =~ ^/var/tmp/avlgate-pgtmp\.[A-Za-z0-9]+$ ]] || die "$dir/rundir: not a pgtmp directory: '$r'"
  echo "$r"
}

# Sets run to where start keeps the server's files (see the header), made ready for postgres:
# DIR when postgres can reach it, else the private directory DIR/rundir names, else a new one.
start_rundir() {
  if [ -f "$dir/rundir" ] && [ ! -d "$(rundir)" ]; then rm -f "$dir/rundir"; fi # cleaned away
  run=$(rundir)
  [ "$run" = "$dir" ] && is_root || return 0
  if as_pg test -x "$(dirname "$dir")"; then
    chown postgres: "$dir"
    return 0
  fi
  run=$(mktemp -d /var/tmp/avlgate-pgtmp.XXXXXX)
  chown postgres: "$run"
  chmod 700 "$run"
  echo "$run" >"$dir/rundir"
  echo "pgtmp: the postgres user cannot reach $dir: the server's files are in $run" >&2
}

# pg_ctl stop with mode (fast, immediate) when a server runs from run.
pg_stop() {
  [ -f "$run/data/postmaster.pid" ] || return 0
  as_pg "$bindir/pg_ctl" -D "$run/data" -m "$1" -w -t 60 stop >/dev/null
}

case "$cmd" in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  start_rundir
  if [ ! -f "$run/data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$run/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$run/initdb.log" 2>&1 \
      || { cat "$run/initdb.log" >&2; die "initdb failed"; }
    cat >>"$run/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$run'
max_connections = 200
shared_buffers = 256MB
fsync = off
full_page_writes = off
synchronous_commit = on
max_wal_size = 4GB
log_min_messages = warning
log_line_prefix = '%m [%p] '
log_checkpoints = on
log_autovacuum_min_duration = 0
CONF
    new=1
  fi
  [ -n "$port" ] || port=$(cat "$dir/port" 2>/dev/null || tw_free_port)
  echo "$port" >"$dir/port"
  as_pg "$bindir/pg_ctl" -D "$run/data" -l "$run/server.log" -o "-p $port" -w -t 60 start >/dev/null \
    || { tail -20 "$run/server.log" >&2; die "pg_ctl start failed"; }
  if [ "${new:-0}" = 1 ]; then
    as_pg "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
      -c "CREATE ROLE avlgate LOGIN SUPERUSER" -c "CREATE DATABASE avlgate OWNER avlgate" >/dev/null
  fi
  conninfo
  ;;
stop | kill)
  [ -d "$dir" ] || exit 0
  run=$(rundir)
  if [ "$cmd" = stop ]; then pg_stop fast; else pg_stop immediate; fi
  ;;
remove)
  [ -d "$dir" ] || exit 0
  dir=$(cd "$dir" && pwd)
  run=$(rundir)
  if ! pg_stop fast; then # a stale postmaster.pid (the server was SIGKILLed) is no server
    pid=$(head -n 1 "$run/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      die "the server in $run (pid $pid) did not stop: nothing removed"
    fi
  fi
  [ "$run" = "$dir" ] || rm -rf "$run"
  # What this script made, by name: a DIR that holds anything else keeps it.
  rm -rf "$dir/data" "$dir/server.log" "$dir/initdb.log" "$dir/port" "$dir/rundir" "$dir"/.s.PGSQL.*
  rmdir "$dir" 2>/dev/null || true
  ;;
conninfo)
  [ -f "$dir/port" ] || die "no server in $dir"
  conninfo
  ;;
*)
  die "unknown command $cmd"
  ;;
esac
