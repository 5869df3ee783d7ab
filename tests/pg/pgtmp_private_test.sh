#!/usr/bin/env bash
# pgtmp_private_test.sh — ctest: pgtmp.sh in a directory the postgres user cannot reach, as
# in a checkout under /root (mode 0700) where `make demo` and `make test` run as root.
#
#   pgtmp_private_test.sh PGTMP_SH
#
# In DIR = P/checkout/pg, P a fresh directory of mode 0700: start (as root the server runs as
# postgres, so its files must go to a private directory it can reach: DIR/rundir), a table
# written and read back through psql, stop (nothing runs), start again (the rows are still
# there: the fixture's tests stop and restart its server), remove: nothing runs, the private
# directory and DIR are gone, and P is still mode 0700. Fails on a pgtmp.sh that initdbs in
# DIR regardless ("initdb: could not access directory ...: Permission denied"). As another
# user than root the server runs as that user, who reaches P: the same checks, no rundir.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: pgtmp_private_test.sh PGTMP_SH" >&2; exit 2; }
pgtmp=$1
. "$(dirname "$0")/../lib/throwaway.sh"
tw_find_psql

fail() { echo "pgtmp_private_test: FAIL: $*" >&2; exit 1; }
parent=$(mktemp -d /tmp/avlgate-pgtmp-private.XXXXXX)
dir=$parent/checkout/pg
tw_defer 'rm -rf "$parent"'
tw_defer '"$pgtmp" remove "$dir" >/dev/null 2>&1'
chmod 700 "$parent"

# The postmaster's pid, or nothing, from the data directory wherever it is.
run=
postmaster() { head -n 1 "$run/data/postmaster.pid" 2>/dev/null || true; }
running() { local pid; pid=$(postmaster); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
sql() { psql "$conninfo" -X -q -tA -v ON_ERROR_STOP=1 -c "$1"; }
# pg_ctl stop -w returns once the pid file is gone; the process itself ends a moment later.
gone() {
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# 1. start, and where the files went
conninfo=$("$pgtmp" start "$dir") || fail "pgtmp.sh start $dir failed"
if [ "$(id -u)" -eq 0 ]; then
  [ -f "$dir/rundir" ] || fail "as root with an unreachable $dir: no $dir/rundir"
  run=$(cat "$dir/rundir")
  case "$run" in "$parent"/*) fail "the private directory $run is under the unreachable $parent" ;; esac
  [ "$(stat -c '%U %a' "$run")" = "postgres 700" ] ||
    fail "$run: $(stat -c '%U %a' "$run"), want postgres 700"
  [ ! -e "$dir/data" ] || fail "$dir/data made anyway"
else
  run=$dir
fi
[ -f "$run/data/PG_VERSION" ] || fail "no cluster in $run/data"
[ -f "$run/server.log" ] || fail "no $run/server.log"
running || fail "no postmaster running from $run/data"
pid=$(postmaster)
if [ "$(id -u)" -eq 0 ]; then
  [ "$(ps -o user= -p "$pid")" = postgres ] || fail "the postmaster runs as $(ps -o user= -p "$pid")"
fi
[ "$("$pgtmp" conninfo "$dir")" = "$conninfo" ] || fail "conninfo differs from what start printed"

# 2. a query through psql
sql "CREATE TABLE kept (x integer); INSERT INTO kept VALUES (42)" >/dev/null
[ "$(sql "SELECT x FROM kept")" = 42 ] || fail "the row written is not read back"

# 3. stop: nothing runs; start again: the data is still there
"$pgtmp" stop "$dir" || fail "pgtmp.sh stop failed"
gone "$pid" || fail "the postmaster (pid $pid) still runs 5 s after stop"
conninfo=$("$pgtmp" start "$dir") || fail "pgtmp.sh start after stop failed"
[ "$(sql "SELECT x FROM kept")" = 42 ] || fail "the row is gone after stop and start"
pid=$(postmaster)

# 4. remove: nothing runs, nothing is left, the parent is as it was
"$pgtmp" remove "$dir" || fail "pgtmp.sh remove failed"
gone "$pid" || fail "the postmaster (pid $pid) still runs 5 s after remove"
left=$(pgrep -af -- "$run/data" || true)
[ -z "$left" ] || fail "still running: $left"
[ ! -e "$run" ] || fail "$run left behind"
[ ! -e "$dir" ] || fail "$dir left behind: $(ls -A "$dir")"
[ "$(stat -c %a "$parent")" = 700 ] || fail "$parent is now mode $(stat -c %a "$parent")"
echo "pgtmp_private_test: ok (the server's files were in $run)"
