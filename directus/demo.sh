#!/usr/bin/env bash
# demo.sh — `make demo-directus`: the demo's stack (a throwaway PostgreSQL and Redis under
# ./var, the gateway) with Directus in front, and 5 simulated trackers that stay online and
# answer commands. Prints the admin URL, the operator's login and what to click to send
# `getinfo` to a tracker and see its answer; sends one itself first, as the operator over REST,
# to show the path works. Runs until Ctrl-C (or AVLGATE_DEMO_SECONDS), then stops everything it
# started; the database stays in ./var/pg and Directus's settings and secrets in
# ./var/directus (credentials, mode 0600) for the next run.
#
# usage: directus/demo.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
var=$top/var
port=${AVLGATE_DEMO_PORT:-5027}
dport=${AVLGATE_DEMO_DIRECTUS_PORT:-8055}
mkdir -p "$var"
. "$top/tests/lib/throwaway.sh"
dstack=$top/directus/dstack.sh

echo "== PostgreSQL and Redis (throwaway, under $var)"
tw_pg_start "$var/pg" keep
tw_redis_start "$var/redis"

echo "== Directus 11.3.5 (install from directus/package-lock.json: minutes the first time)"
"$dstack" setup "$var/directus" "$TW_PG" "$TW_REDIS" "$dport"
tw_defer "$(printf '%q stop %q' "$dstack" "$var/directus")"
"$dstack" start "$var/directus"

echo "== avlgate run --directus-bus (log: var/avlgate.log)"
tw_gateway_start "$top/$build/bin/avlgate" "$port" "$var/avlgate.log" --pg "$TW_PG" \
  --shards 2 --redis "$TW_REDIS" --instance demo --directus-bus --cmd-sweep-s 1

imei=352093081429150
echo "== 5 simulated trackers online ($imei to $((imei + 4))), answering every command"
"$top/$build/bin/avlgate-loadgen" --connect "127.0.0.1:$port" --devices 5 --imei-base "$imei" \
  --period-s 2 --duration-s 0 --command-reply "RTC:2026/12/07 GPS:1 SAT:9 demo OK" \
  >"$var/loadgen.log" 2>&1 &
lg_pid=$!
tw_defer 'tw_stop_pid "$lg_pid"'
for _ in $(seq 1 100); do
  [ "$(redis-cli -h "${TW_REDIS%:*}" -p "${TW_REDIS##*:}" exists "avlgate:dev:{$imei}")" = 1 ] && break
  sleep 0.1
done
for i in 0 1 2 3 4; do
  psql "$TW_PG" -X -q -c "INSERT INTO public.devices (imei, name) VALUES ($((imei + i)), 'demo truck $((i + 1))')
    ON CONFLICT (imei) DO NOTHING"
done

url=$("$dstack" url "$var/directus")
# shellcheck disable=SC1091
. "$var/directus/credentials"
echo "== one command as the operator, over Directus's REST API"
token=$(curl -fsS -H 'content-type: application/json' -d "{\"email\":\"$OPERATOR_EMAIL\",\"password\":\"$OPERATOR_PASSWORD\"}" \
  "$url/auth/login" | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
id=$(curl -fsS -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"imei\":\"$imei\",\"payload\":\"getinfo\"}" "$url/items/commands" | sed 's/.*"id":\([0-9]*\).*/\1/')
for _ in $(seq 1 100); do
  [ "$(psql "$TW_PG" -XtAc "SELECT status FROM public.commands WHERE id = $id")" = answered ] && break
  sleep 0.1
done
psql "$TW_PG" -X -q -P pager=off -c "SELECT id, imei, payload, status, response FROM public.commands WHERE id = $id"

cat <<EOF

== Directus is at $url/admin
   operator: $OPERATOR_EMAIL  password: $OPERATOR_PASSWORD
   admin:    $ADMIN_EMAIL  password: $ADMIN_PASSWORD   (both in var/directus/credentials)

   To send getinfo to a simulated tracker: log in as the operator, open Commands (left), press
   + (top right), IMEI $imei, Payload getinfo, press the tick (Save). Back in Commands the row
   goes pending -> sent -> answered; open it to read the tracker's answer in Response.
   Devices and Device State list the 5 trackers and their last fixes.

EOF
seconds=${AVLGATE_DEMO_SECONDS:-0}
if [ "$seconds" -gt 0 ]; then
  echo "== running for $seconds s (AVLGATE_DEMO_SECONDS)"
  sleep "$seconds"
else
  echo "== running until Ctrl-C"
  trap 'echo; echo "== stopping"' INT
  sleep infinity || true
fi
