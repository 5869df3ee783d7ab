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
#      again rows= equals the table's new rows;
#   4. --io-layout and --table: the same --rows 5001 with --span-h 3 and one --span-end-s into
#      a table of each layout (arrays, jsonb, raw; bench/rowvariants' way): exactly 5001 rows
#      each, io_layout= and table= printed, 50 devices, times within the span (received_at the
#      send time, at or after the record's ts), and the same rows (all but the IO columns) in
#      the three tables; a table without the layout's columns, a bad table name, --span-h
#      without --rows are refused before anything is loaded.
# Steps 2 and 3 use the default layout (arrays) when telemetry.positions has its columns
# (schema 006), else jsonb (the schema before it), and then check that the default is refused
# with a clear message.
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
layout=() # the default (arrays) when the schema has its columns, else jsonb
if [ "$(sql "$conninfo" -c "SELECT count(*) FROM pg_attribute WHERE attname = 'io_ids'
      AND attrelid = 'telemetry.positions'::regclass AND NOT attisdropped")" = 0 ]; then
  layout=(--io-layout jsonb)
  status=0
  "$bin" --pg "$conninfo" --conns 2 --seconds 1 >"$work/out0" 2>"$work/err0" || status=$?
  [ "$status" -eq 1 ] || fail "arrays into a jsonb schema: exit status $status, expected 1"
  grep -q "lacks the columns of --io-layout arrays" "$work/err0" \
    || fail "arrays into a jsonb schema: unclear error: $(cat "$work/err0")"
fi
"$bin" --pg "$conninfo" --conns 2 --seconds 2 "${layout[@]}" --json "$work/out.json" >"$work/out1"
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
"$bin" --pg "$conninfo" --conns 2 --seconds 60 "${layout[@]}" >"$work/out2" &
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

# 4. Each layout into a table of its own, the same rows.
end_s=$(($(date +%s) - 600))
cols="imei bigint NOT NULL, ts timestamptz NOT NULL, received_at timestamptz NOT NULL,
  priority smallint, lon double precision, lat double precision, altitude smallint,
  angle smallint, satellites smallint, speed smallint, event_id integer"
sql "$conninfo" -c "CREATE SCHEMA rv" \
  -c "CREATE TABLE rv.t_arrays ($cols, io_ids integer[], io_vals bigint[], nx_ids integer[],
        nx_vals bytea[], generation smallint, codec smallint)" \
  -c "CREATE TABLE rv.t_jsonb ($cols, io jsonb, generation smallint, codec smallint)" \
  -c "CREATE TABLE rv.t_raw ($cols, io_raw bytea, generation smallint, codec smallint)"
for l in arrays jsonb raw; do
  "$bin" --pg "$conninfo" --conns 2 --rows 5001 --devices 50 --span-h 3 --span-end-s "$end_s" \
    --io-layout "$l" --table "rv.t_$l" --batch-rows 700 >"$work/out_$l"
  cat "$work/out_$l"
  [ "$(field rows "$work/out_$l")" = 5001 ] || fail "$l: rows= is not 5001"
  grep -q " io_layout=$l table=rv.t_$l\$" "$work/out_$l" || fail "$l: io_layout= or table= missing"
  read -r n devs bad < <(sql "$conninfo" -F ' ' -c "
    SELECT count(*), count(DISTINCT imei),
      count(*) FILTER (WHERE received_at < ts OR received_at > to_timestamp($end_s)
        OR received_at < to_timestamp($end_s) - interval '3 hours'
        OR ts < to_timestamp($end_s) - interval '3 hours 11 minutes')
    FROM rv.t_$l")
  [ "$n" = 5001 ] || fail "$l: the table holds $n rows, expected 5001"
  [ "$devs" = 50 ] || fail "$l: $devs devices, expected 50"
  [ "$bad" = 0 ] || fail "$l: $bad rows with times outside the span"
done
rest="imei, ts, received_at, priority, lon, lat, altitude, angle, satellites, speed, event_id,
  generation, codec"
differ=$(sql "$conninfo" -c "SELECT (SELECT count(*) FROM (SELECT $rest FROM rv.t_arrays
    EXCEPT ALL SELECT $rest FROM rv.t_jsonb) a) + (SELECT count(*) FROM (SELECT $rest FROM
    rv.t_jsonb EXCEPT ALL SELECT $rest FROM rv.t_raw) b) + (SELECT count(*) FROM (SELECT $rest
    FROM rv.t_raw EXCEPT ALL SELECT $rest FROM rv.t_arrays) c)")
[ "$differ" = 0 ] || fail "the layouts' tables hold different rows ($differ differ)"
refused() { # PATTERN STATUS ARGS...: refused with that status and message, nothing loaded
  local pattern=$1 want=$2 status=0
  shift 2
  "$bin" --pg "$conninfo" --conns 1 "$@" >"$work/out_r" 2>"$work/err_r" || status=$?
  if [ "$status" -ne "$want" ] || ! grep -q -- "$pattern" "$work/err_r"; then
    fail "$*: exit status $status, $(cat "$work/err_r")"
  fi
}
refused "rv.t_jsonb lacks the columns of --io-layout raw" 1 --rows 10 --io-layout raw --table rv.t_jsonb
refused "does not exist" 1 --rows 10 --io-layout raw --table rv.nope
refused "bad value for --table" 2 --rows 10 --table "rv.t_raw;"
refused "bad value for --io-layout" 2 --rows 10 --io-layout yaml
refused "needs --rows" 2 --seconds 1 --span-h 3
[ "$(sql "$conninfo" -c "SELECT count(*) FROM rv.t_jsonb")" = 5001 ] || fail "a refused run loaded rows"
echo "copyceil_test: ok (rows=$rows stored=$stored, after SIGTERM rows=$rows2, 5001 rows in each layout)"
