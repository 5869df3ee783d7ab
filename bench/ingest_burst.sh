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
. "$top/tests/lib/throwaway.sh"
tw_tmpdir burst
tmp=$TW_TMP
port=${AVLGATE_BENCH_PORT:-15029}

tw_pg_start "$tmp/pg"
conninfo=$TW_PG
tw_gateway_start "$top/$build/bin/avlgate" "$port" "$tmp/gateway.log" --pg "$conninfo" \
  --shards 2 --apply-schema "$top/schema/postgres" "$@"

ticks() { awk '{print $14 + $15}' "/proc/$TW_GW/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks)
"$top/$build/bin/avlgate-burst" --connect "127.0.0.1:$port" --devices "$devices" \
  --packets "$packets" --records "$records"
t1=$(ticks)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$TW_GW/status")
tw_gateway_stop || true
stored=$(psql "$conninfo" -XqtAc \
  "SELECT count(*) || ' ' || count(DISTINCT (imei, ts, event_id)) FROM telemetry.positions")
total=$((devices * packets * records))
awk -v t="$((t1 - t0))" -v hz="$hz" -v n="$total" -v rss="$rss_kb" -v st="$stored" 'BEGIN {
  split(st, s, " ");
  printf "gateway_cpu_s=%.2f gateway_cpu_us_per_record=%.2f gateway_rss_kib=%d stored=%d distinct=%d\n",
         t / hz, t / hz * 1e6 / n, rss, s[1], s[2] }'
grep -E 'shard stopped' "$tmp/gateway.log" || true
