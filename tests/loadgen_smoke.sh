#!/usr/bin/env bash
# loadgen_smoke.sh — the real gateway under avlgate-loadgen, checked end to end.
#
# Starts `avlgate run` (2 shards) against a database of its own on the ctest PostgreSQL
# fixture, runs avlgate-loadgen with 200 devices for 5 s with --verify, --fragment,
# --malformed 0.01, a reconnect storm and slow devices, and asserts: exit 0, "verify: ... OK",
# malformed packets sent, closed by the gateway and never acknowledged, no other errors. At the
# same time a second loadgen runs 200 other devices over UDP (--udp --verify) against the same
# gateway: exit 0, "verify: ... OK", datagrams acknowledged, no errors.
#
# usage: loadgen_smoke.sh AVLGATE LOADGEN PGTMP_SH PGDIR SCHEMA_DIR WORKDIR
set -euo pipefail
avlgate=$1 loadgen=$2 pgtmp=$3 pgdir=$4 schema=$5 work=$6
. "$(dirname "$0")/lib/throwaway.sh"

die() { echo "loadgen_smoke: $*" >&2; exit 1; }
mkdir -p "$work"
server=$("$pgtmp" conninfo "$pgdir") || die "no PostgreSQL fixture in $pgdir"
db=test_loadgen_smoke_$$
conninfo="${server/dbname=avlgate/dbname=$db}"
psql "$server" -qAt -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" \
  >/dev/null || die "cannot create database $db"
tw_defer 'psql "$server" -qAt -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1'

port=$(tw_free_port)
log=$work/loadgen_smoke.gateway.log
out=$work/loadgen_smoke.out

tw_gateway_start "$avlgate" "$port" "$log" --pg "$conninfo" --apply-schema "$schema" \
  --shards 2 --conns-max 1024 --bufs 256 --frame-timeout-s 5 --drain-timeout-ms 5000 ||
  die "the gateway did not start"

out_udp=$work/loadgen_smoke.udp.out
set +e
"$loadgen" --udp --connect "127.0.0.1:$port" --devices 200 --imei-base 356307049000000 \
  --duration-s 5 --records 10 --verify --pg "$conninfo" >"$out_udp" &
udp_pid=$!
"$loadgen" --connect "127.0.0.1:$port" --devices 200 --duration-s 5 --records 10 \
  --verify --pg "$conninfo" --fragment 0.2 --malformed 0.01 --reconnect-storm 2:0.2 \
  --slow 0.05 --json "$work/loadgen_smoke.json" >"$out"
status=$?
wait "$udp_pid"
udp_status=$?
set -e
cat "$out" "$out_udp"
[ "$status" -eq 0 ] || die "avlgate-loadgen exited with $status"
[ "$udp_status" -eq 0 ] || die "avlgate-loadgen --udp exited with $udp_status"
grep -q '^verify: .* missing=0 duplicated=0 .* OK$' "$out_udp" || die "UDP: verify did not pass"
[ "$(grep -o " records_acked=[0-9]*" "$out_udp" | head -1 | cut -d= -f2)" -gt 0 ] ||
  die "UDP: nothing acknowledged"
[ "$(grep -o " errors=[0-9]*" "$out_udp" | head -1 | cut -d= -f2)" -eq 0 ] || die "UDP: errors counted"

value() { grep -o " $1=[0-9.]*" "$out" | head -1 | cut -d= -f2; }
grep -q '^verify: .* missing=0 duplicated=0 .* OK$' "$out" || die "verify did not pass"
[ "$(value records_acked)" -gt 0 ] || die "nothing acknowledged"
[ "$(value malformed_sent)" -gt 0 ] || die "no malformed packet was sent"
[ "$(value malformed_acked)" -eq 0 ] || die "the gateway acknowledged a malformed packet"
[ "$(value malformed_closed)" -gt 0 ] || die "the gateway closed no malformed packet"
[ "$(value storm_drops)" -gt 0 ] || die "no reconnect storm happened"
[ "$(value errors)" -eq 0 ] || die "errors counted"
grep -q '"timeline":\[{' "$work/loadgen_smoke.json" || die "no timeline in the JSON"

tw_gateway_stop || die "the gateway did not stop cleanly after SIGTERM"
echo "loadgen_smoke: OK"
