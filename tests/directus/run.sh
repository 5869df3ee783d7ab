#!/usr/bin/env bash
# tests/directus/run.sh [BUILD_DIR] — the business plane end to end, all real and on loopback:
# a throwaway PostgreSQL and Redis, Directus 11.3.5 (directus/dstack.sh: install from the
# lockfile, setup, start), the gateway (`avlgate run --directus-bus`) and a simulated fleet
# (avlgate-loadgen, answering every command). In order:
#   1. set-up on a database the gateway already uses (its SQL applied and rows in it first):
#      the rows survive, and the drift check (`schema apply --dry-run`) reports nothing;
#   2. route.test.mjs: the hook's rules and its Redis routing, against the same Redis;
#   3. e2e.mjs: operator over REST + WebSocket, 100 commands to online devices, p50/p99 of
#      create -> `answered` on the WebSocket, the filter's refusals, the operator's limits;
#   4. ui.mjs: the same through the admin UI in Debian's chromium (playwright-core), a
#      screenshot kept as an artefact;
#   5. Directus stopped: telemetry is still stored, a command inserted with SQL is delivered
#      by the gateway's sweep; Directus started again: that command was delivered once.
# Artefacts (logs, the screenshot, e2e-latency.json) go to $AVLGATE_DIRECTUS_ARTEFACTS
# (default BUILD_DIR/directus-artefacts). Needs node, npm and chromium: .ci/install-deps --directus.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}
bin=$top/$build/bin
art=${AVLGATE_DIRECTUS_ARTEFACTS:-$top/$build/directus-artefacts}
rm -rf "$art"
mkdir -p "$art"
. "$top/tests/lib/throwaway.sh"
tw_find_psql
tw_tmpdir directus
tmp=$TW_TMP
dstack=$top/directus/dstack.sh
say() { printf '== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
sql() { psql "$TW_PG" -X -q -tA -v ON_ERROR_STOP=1 "$@"; }
keep() { cp -r "$tmp/d/directus.log" "$tmp/gateway.log" "$tmp/loadgen.log" "$art/" 2>/dev/null || true; }
tw_defer keep

tw_pg_start "$tmp/pg"
tw_redis_start "$tmp/redis"
rport=${TW_REDIS##*:}

say "install (directus/dstack.sh install)"
t0=$(date +%s)
"$dstack" install
echo "install: $(($(date +%s) - t0)) s"

say "1. set-up on a database the gateway already uses"
tw_schema "$TW_PG"
imei0=356307042440000
sql -c "INSERT INTO public.devices (imei, name) VALUES ($imei0, 'before Directus')"
sql -c "INSERT INTO public.commands (imei, payload, status) VALUES ($imei0, 'old', 'answered')"
"$dstack" setup "$tmp/d" "$TW_PG" "$TW_REDIS"
tw_defer "$(printf '%q stop %q' "$dstack" "$tmp/d")"
"$dstack" start "$tmp/d"
[ "$(sql -c "SELECT name FROM public.devices WHERE imei = $imei0")" = "before Directus" ] ||
  fail "a devices row from before the set-up is gone"
[ "$(sql -c "SELECT count(*) FROM public.commands WHERE payload = 'old'")" = 1 ] ||
  fail "a commands row from before the set-up is gone"
ok "the gateway's rows survived bootstrap and snapshot apply"
drift=$("$dstack" drift "$tmp/d") || fail "drift after set-up: $drift"
ok "schema apply --dry-run reports nothing after set-up"
# The same order again over the finished set-up (a redeploy): still nothing to change.
"$dstack" setup "$tmp/d" "$TW_PG" "$TW_REDIS"
drift=$("$dstack" drift "$tmp/d") || fail "drift after a second set-up: $drift"
ok "a second set-up changes nothing"

say "2. the hook's rules and routing (route.test.mjs)"
AVLGATE_TEST_REDIS=$TW_REDIS node --test "$top/tests/directus/route.test.mjs"

say "gateway (--directus-bus) and 20 simulated trackers"
port=$(tw_free_port)
tw_gateway_start "$bin/avlgate" "$port" "$tmp/gateway.log" --pg "$TW_PG" --redis "$TW_REDIS" \
  --instance gw1 --shards 2 --directus-bus --cmd-sweep-s 1
reply="avlgate-directus-ok"
devices=20 base=352093081450000
"$bin/avlgate-loadgen" --connect "127.0.0.1:$port" --devices "$devices" --imei-base "$base" \
  --period-s 1 --duration-s 0 --command-reply "$reply" --command-log "$tmp/commands.log" \
  >"$tmp/loadgen.log" 2>&1 &
lg=$!
tw_defer "tw_stop_pid $lg"
imeis=()
for ((i = 0; i < devices; i++)); do imeis+=($((base + i))); done
for ((i = 0; i < 300; i++)); do
  n=$(redis-cli -p "$rport" --scan --pattern 'avlgate:dev:*' | wc -l)
  [ "$n" -ge "$devices" ] && break
  sleep 0.1
done
[ "$n" -ge "$devices" ] || fail "only $n of $devices devices registered in 30 s"
ok "$devices devices online"

say "3. operator over REST and WebSocket (e2e.mjs)"
node "$top/tests/directus/e2e.mjs" "$tmp/d" "$TW_PG" "$reply" "${imeis[@]}"
cp "$tmp/d/e2e-latency.json" "$art/"

say "4. the admin UI in chromium (ui.mjs)"
node "$top/tests/directus/ui.mjs" "$tmp/d" "${imeis[1]}" "$reply" "$art/ui-answered.png"

say "5. Directus stopped"
"$dstack" stop "$tmp/d"
rows0=$(sql -c "SELECT count(*) FROM telemetry.positions")
sleep 3
rows1=$(sql -c "SELECT count(*) FROM telemetry.positions")
[ "$rows1" -gt "$rows0" ] || fail "no telemetry stored while Directus was down ($rows0 -> $rows1)"
ok "telemetry stored while Directus is down ($rows0 -> $rows1 rows in 3 s)"
payload="while-directus-down-$$"
id=$(sql -c "INSERT INTO public.commands (imei, payload) VALUES (${imeis[2]}, '$payload') RETURNING id")
for ((i = 0; i < 300; i++)); do
  [ "$(sql -c "SELECT status FROM public.commands WHERE id = $id")" = answered ] && break
  sleep 0.1
done
[ "$(sql -c "SELECT status || ' ' || response FROM public.commands WHERE id = $id")" = "answered $reply" ] ||
  fail "command $id (SQL, Directus down) not answered in 30 s"
ok "a command inserted with SQL while Directus is down is delivered (sweep) and answered"
"$dstack" start "$tmp/d"
sleep 3
n=$(grep -c -- "$payload" "$tmp/commands.log" || true)
[ "$n" = 1 ] || fail "command $id reached the device $n times"
ok "Directus started again: that command reached the device once"
node "$top/tests/directus/e2e.mjs" --one "$tmp/d" "$TW_PG" "$reply" "${imeis[3]}"
ok "and commands from Directus flow again"
tw_gateway_stop || fail "the gateway did not stop cleanly"
echo "directus tests: all passed"
