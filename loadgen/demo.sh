#!/usr/bin/env bash
# demo.sh — `make demo`: a throwaway PostgreSQL and Redis under ./var, the schema, the
# gateway, a burst of simulated devices over TCP and 50 more over UDP (checked stored exactly
# once), what landed, the gateway's metrics, then a Codec 12 command sent to a simulated tracker
# and its answer. Everything it starts, it stops on exit
# (tests/lib/throwaway.sh); the database stays in ./var/pg for a look afterwards and the next
# run (`tests/pg/pgtmp.sh start var/pg` starts it again, `... remove var/pg` deletes it). As
# root, when the postgres user cannot reach ./var (a checkout under /root), its files are in
# a private /var/tmp/avlgate-pgtmp.XXXXXX named in var/pg/rundir: see tests/pg/pgtmp.sh.
#
# usage: loadgen/demo.sh BUILD_DIR [DEVICES PACKETS RECORDS]
set -euo pipefail
build=${1:-build}
devices=${2:-200} packets=${3:-20} records=${4:-10}
top=$(cd "$(dirname "$0")/.." && pwd)
var="$top/var"
pgdir="$var/pg"
redisdir="$var/redis"
port=${AVLGATE_DEMO_PORT:-5027}
mkdir -p "$var"
. "$top/tests/lib/throwaway.sh"

echo "== PostgreSQL (throwaway, under $pgdir)"
tw_pg_start "$pgdir" keep
conninfo=$TW_PG
echo "   $conninfo"

echo "== Redis (throwaway, under $redisdir)"
tw_redis_start "$redisdir"
redis=$TW_REDIS
echo "   $redis"

echo "== avlgate run (log: var/avlgate.log)"
mport=$((port + 1))
tw_gateway_start "$top/$build/bin/avlgate" "$port" "$var/avlgate.log" --pg "$conninfo" \
  --shards 2 --metrics "127.0.0.1:$mport" --redis "$redis" --instance demo \
  --apply-schema "$top/schema/postgres"

echo "== $devices devices x $packets packets x $records records (codecs 8, 8E, 16)"
"$top/$build/bin/avlgate-burst" --connect "127.0.0.1:$port" --devices "$devices" \
  --packets "$packets" --records "$records"

echo "== 50 more devices over UDP, 5 s, each record checked stored exactly once (--verify)"
"$top/$build/bin/avlgate-loadgen" --udp --connect "127.0.0.1:$port" --devices 50 \
  --imei-base 356307049100000 --rate 500 --duration-s 5 --records "$records" --verify \
  --pg "$conninfo" | grep -E '^verify'

echo "== what landed"
psql "$conninfo" -X -q -P pager=off <<'SQL'
SELECT count(*) AS rows, count(DISTINCT imei) AS devices,
       min(ts) AS oldest, max(ts) AS newest FROM telemetry.positions;
SELECT codec, count(*) AS rows FROM telemetry.positions GROUP BY codec ORDER BY codec;
SELECT imei, ts, round(lon::numeric, 5) AS lon, round(lat::numeric, 5) AS lat, speed,
       satellites, left(io::text, 60) AS io
  FROM telemetry.positions_io ORDER BY received_at DESC, ts DESC LIMIT 5;
SELECT count(*) AS devices_with_state, max(last_ts) AS newest_fix FROM public.device_state;
SQL

echo "== what the gateway counted (GET http://127.0.0.1:$mport/metrics, a few series)"
if exec 3<>"/dev/tcp/127.0.0.1/$mport"; then
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  grep -E '^avlgate_(connections_accepted_total|packets_acked_total|records_stored_total|rows_committed_total|ack_latency_seconds_(sum|count)|udp_datagrams_(received|acked)_total)' <&3 || true
  exec 3<&-
fi

echo "== a command: 5 trackers online (avlgate-loadgen answers commands), one gets 'getinfo'"
imei=352093081429150
"$top/$build/bin/avlgate-loadgen" --connect "127.0.0.1:$port" --devices 5 --imei-base "$imei" \
  --period-s 2 --duration-s 20 --command-reply "RTC:2026/11/28 GPS:1 SAT:9 demo OK" \
  >"$var/loadgen.log" 2>&1 &
lg_pid=$!
tw_defer 'tw_stop_pid "$lg_pid"'
for _ in $(seq 1 50); do
  [ "$(redis-cli -h "${redis%:*}" -p "${redis##*:}" exists "avlgate:dev:{$imei}")" = 1 ] && break
  sleep 0.1
done
"$top/$build/bin/avlgate" command send --pg "$conninfo" --redis "$redis" --wait 10 "$imei" getinfo
"$top/$build/bin/avlgate" command list --pg "$conninfo" --limit 3
tw_stop_pid "$lg_pid"
lg_pid=

echo "== stopping the gateway (SIGTERM drains)"
tw_gateway_stop || true
tail -n 1 "$var/avlgate.log"
