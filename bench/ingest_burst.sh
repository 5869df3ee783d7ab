#!/usr/bin/env bash
# ingest_burst.sh — gateway CPU and memory per stored record over one closed-loop burst.
#
#   bench/ingest_burst.sh [BUILD_DIR] [DEVICES PACKETS RECORDS] [-- GATEWAY_ARGS...]
#
# Starts a throwaway PostgreSQL (tests/pg/pgtmp.sh) in a temporary directory, the gateway
# (2 shards) with the schema, and avlgate-burst: DEVICES devices, each sending PACKETS packets
# of RECORDS records with one packet in flight. Prints the burst's summary, the gateway's CPU
# (utime + stime from /proc/PID/stat, taken just before and just after the burst) per stored
# record, its RSS, and the stored / distinct row counts (every record exactly once). Everything
# it starts, it stops. The end-to-end benchmark with the load generator is bench/e2e.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
devices=${2:-1000} packets=${3:-40} records=${4:-10}
shift $(($# < 4 ? $# : 4))
[ "${1:-}" = "--" ] && shift
tmp=$(mktemp -d /tmp/avlgate-burst.XXXXXX)
chmod 755 "$tmp" # the server runs as postgres when we are root
port=${AVLGATE_BENCH_PORT:-15029}
gw=
cleanup() {
  [ -n "$gw" ] && kill -TERM "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
  "$top/tests/pg/pgtmp.sh" stop "$tmp/pg" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

conninfo=$("$top/tests/pg/pgtmp.sh" start "$tmp/pg")
"$top/$build/bin/avlgate" run --pg "$conninfo" --listen "127.0.0.1:$port" --shards 2 \
  --apply-schema "$top/schema/postgres" "$@" >"$tmp/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$gw" 2>/dev/null || { cat "$tmp/gateway.log" >&2; exit 1; }
  sleep 0.1
done

ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
"$top/$build/bin/avlgate-burst" --connect "127.0.0.1:$port" --devices "$devices" \
  --packets "$packets" --records "$records"
t1=$(ticks)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")
kill -TERM "$gw"
wait "$gw" || true
gw=
stored=$(psql "$conninfo" -XqtAc \
  "SELECT count(*) || ' ' || count(DISTINCT (imei, ts, event_id)) FROM telemetry.positions")
total=$((devices * packets * records))
awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$total" -v rss="$rss_kb" -v st="$stored" 'BEGIN {
  split(st, s, " ");
  printf "gateway_cpu_s=%.2f gateway_cpu_us_per_record=%.2f gateway_rss_kib=%d stored=%d distinct=%d\n",
         t / hz, t / hz * 1e6 / n, rss, s[1], s[2] }'
grep -E 'shard stopped' "$tmp/gateway.log" || true
