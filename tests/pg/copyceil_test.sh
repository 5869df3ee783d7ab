#!/usr/bin/env bash
# copyceil_test.sh — ctest for avlgate-copyceil (bench/copyceil.c) on the pg fixture's server.
#
#   copyceil_test.sh COPYCEIL_BIN PGTMP_SH PGTMP_DIR SCHEMA_DIR
#
# In a database of its own (test_copyceil_<pid>, dropped at the end):
#   1. without the schema, copyceil refuses with a clear message and exit status 1;
#   2. with the schema applied by psql, 2 connections for 2 s: the rows= it prints are the rows
#      stored, all in today's daily partition, (imei, ts) distinct, from 1000 devices, rows/s
#      > 0, the same figures in --json, and no session of it is left in a transaction;
#   3. SIGTERM in the middle: it stops after the batches in flight commit, exit status 0, and
#      again rows= equals the table's new rows.
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: copyceil_test.sh COPYCEIL PGTMP_SH PGTMP_DIR SCHEMA_DIR" >&2; exit 2; }
bin=$1 pgtmp=$2 pgdir=$3 schema=$4
. "$(dirname "$0")/../lib/throwaway.sh"
tw_find_psql

server=$("$pgtmp" conninfo "$pgdir")
db=test_copyceil_$$
conninfo="$server dbname=$db"
tw_tmpdir copyceil-test
work=$TW_TMP
fail() { echo "copyceil_test: FAIL: $*" >&2; exit 1; }
sql() { psql -X -q -tA -v ON_ERROR_STOP=1 "$@"; }
tw_defer 'sql "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1'

sql "$server" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
  -c "CREATE DATABASE $db" >/dev/null

field() { sed -n "s/.*\\b$1=\\([0-9.]*\\).*/\\1/p" "$2"; }

# 1. No schema: a clear error before anything is timed.
status=0
"$bin" --pg "$conninfo" --conns 2 --seconds 1 >"$work/out0" 2>"$work/err0" || status=$?
[ "$status" -eq 1 ] || fail "without the schema: exit status $status, expected 1"
grep -q "telemetry.positions does not exist" "$work/err0" \
  || fail "without the schema: unclear error: $(cat "$work/err0")"
[ ! -s "$work/out0" ] || fail "without the schema it printed a summary"

# 2. The schema, then 2 connections for 2 s.
tw_schema "$conninfo" "$schema"
"$bin" --pg "$conninfo" --conns 2 --seconds 2 --json "$work/out.json" >"$work/out1"
cat "$work/out1"
rows=$(field rows "$work/out1")
rate=$(field copy_rows_per_s "$work/out1")
if [ -z "$rows" ] || [ -z "$rate" ]; then
  fail "no rows= or copy_rows_per_s= in: $(cat "$work/out1")"
fi
[ "$(field conns "$work/out1")" = 2 ] || fail "conns= is not 2"
awk -v r="$rate" 'BEGIN { exit !(r > 0) }' || fail "copy_rows_per_s=$rate is not > 0"
[ "$rows" -gt 0 ] || fail "rows=$rows"
[ $((rows % 1000)) -eq 0 ] || fail "rows=$rows: not whole 1000-row batches"
read -r stored distinct devices in_default < <(sql "$conninfo" -F ' ' -c \
  "SELECT count(*), count(DISTINCT (imei, ts)), count(DISTINCT imei),
          count(*) FILTER (WHERE tableoid = 'telemetry.positions_default'::regclass)
   FROM telemetry.positions")
[ "$stored" = "$rows" ] || fail "printed rows=$rows, the table holds $stored"
[ "$distinct" = "$rows" ] || fail "(imei, ts) distinct: $distinct of $rows"
[ "$devices" = 1000 ] || fail "$devices devices, expected 1000"
[ "$in_default" = 0 ] || fail "$in_default rows in the default partition, expected today's"
grep -q "\"rows\":$rows," "$work/out.json" || fail "--json: $(cat "$work/out.json")"
grep -q "\"copy_rows_per_s\":$rate," "$work/out.json" || fail "--json: $(cat "$work/out.json")"
open_txns=$(sql "$server" -c "SELECT count(*) FROM pg_stat_activity
                              WHERE datname = '$db' AND xact_start IS NOT NULL")
[ "$open_txns" = 0 ] || fail "$open_txns sessions left in a transaction"

# 3. SIGTERM: the batches in flight commit, and the summary counts exactly them.
"$bin" --pg "$conninfo" --conns 2 --seconds 60 >"$work/out2" &
pid=$!
sleep 1.5
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
cat "$work/out2"
[ "$status" -eq 0 ] || fail "after SIGTERM: exit status $status"
rows2=$(field rows "$work/out2")
stored2=$(sql "$conninfo" -c "SELECT count(*) FROM telemetry.positions")
[ -n "$rows2" ] || fail "after SIGTERM: no summary"
[ "$stored2" = $((rows + rows2)) ] \
  || fail "after SIGTERM: printed rows=$rows2, the table gained $((stored2 - rows))"
awk -v s="$(field seconds "$work/out2")" 'BEGIN { exit !(s < 30) }' || fail "SIGTERM did not stop it"
echo "copyceil_test: ok (rows=$rows stored=$stored, after SIGTERM rows=$rows2)"
