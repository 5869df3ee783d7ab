#!/usr/bin/env bash
# instances.sh — two gateway instances behind a real HAProxy (TCP mode, send-proxy-v2, health
# checks on each /healthz, balance leastconn: tuning/haproxy.cfg's choices) on loopback, with a
# throwaway PostgreSQL and Redis. Checks, in order:
#   1. a device moved: a tracker connects to A (straight, with a PROXY v1 header), then to B
#      while its socket to A stays open (a NAT forgot it). A closes the old connection within
#      --registry-ttl-s / 3 (+ slack; measured, printed) and counts it in
#      avlgate_devices_moved_total (the registry's epoch is B's owner token: no clock decides
#      which connection is newer); a command sent after the move (`avlgate command send`)
#      reaches the tracker on B, and nothing reaches the old socket.
#   2. commands to devices on both instances: 300 loadgen trackers through HAProxy, split
#      between A and B; one command to a device the registry places on A, one on B, each with
#      `command send --wait`: both answered.
#   3. losing an instance: A is SIGKILLed mid-run; its trackers reconnect through HAProxy to B,
#      and loadgen --verify finds every acknowledged record stored exactly once, none missing.
# usage: instances.sh AVLGATE LOADGEN PGTMP_SH REDISTMP_SH WORKDIR
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: $0 AVLGATE LOADGEN PGTMP_SH REDISTMP_SH WORKDIR" >&2; exit 2; }
avlgate=$1 loadgen=$2 work=$5
export TW_PGTMP=$3 TW_REDISTMP=$4
. "$(dirname "$0")/../lib/throwaway.sh"
die() { echo "instances: FAIL: $*" >&2; for f in "$work"/instances.*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }
mkdir -p "$work"
rm -f "$work"/instances.*
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || die "no haproxy: .ci/install-deps"
tw_find_psql
tw_tmpdir instances
tw_pg_start "$TW_TMP/pg"
tw_redis_start "$TW_TMP/redis"
conninfo="$TW_PG"
tw_schema "$conninfo"
psql() { command psql "$conninfo" -XqAt -v ON_ERROR_STOP=1 "$@"; }
redis_hostport=$TW_REDIS
rcli() { redis-cli -h "${redis_hostport%:*}" -p "${redis_hostport##*:}" ${REDISTMP_PASSWORD:+-a "$REDISTMP_PASSWORD"} --no-auth-warning "$@"; }

ttl=3
pa=$(tw_free_port) ma=$(tw_free_port) pb=$(tw_free_port) mb=$(tw_free_port)
hport=$(tw_free_port) sport=$(tw_free_port)
gw() { # name port metrics -> pid in $gw_pid
  "$avlgate" run --listen "127.0.0.1:$2" --pg "$conninfo" --instance "$1" --shards 1 \
    --redis "$redis_hostport" --metrics "127.0.0.1:$3" --registry-ttl-s "$ttl" --batch-ms 5 \
    --cmd-sweep-s 1 --proxy-protocol --proxy-from 127.0.0.1/32 --udp off \
    >"$work/instances.$1.log" 2>&1 &
  gw_pid=$!
  tw_defer "tw_stop_pid $gw_pid 20"
  tw_wait_port "$2" "$gw_pid" || die "gateway $1 did not start"
}
gw multi-a "$pa" "$ma"; pid_a=$gw_pid
gw multi-b "$pb" "$mb"; pid_b=$gw_pid
metric() { # port name -> the sum of its series
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}

# ---- 1. a device moved, its old socket left open --------------------------------------------
imei=356307042464001
hello() { # the PROXY v1 header from client address $1, then the IMEI frame
  printf 'PROXY TCP4 %s 127.0.0.1 4000 5027\r\n\x00\x0f%s' "$1" "$imei"
}
exec 3<>"/dev/tcp/127.0.0.1/$pa"
hello 198.51.100.1 >&3
IFS= read -r -d '' -N1 -t 5 answer <&3 || die "A did not answer the handshake"
[ "$answer" = $'\x01' ] || die "A answered $(printf %q "$answer")"
exec 4<>"/dev/tcp/127.0.0.1/$pb"
hello 198.51.100.2 >&4
moved_at=$(date +%s%N)
IFS= read -r -d '' -N1 -t 5 answer <&4 || die "B did not answer the handshake"
[ "$answer" = $'\x01' ] || die "B answered $(printf %q "$answer")"
# A's registry walk finds B's newer epoch and closes its connection: EOF on fd 3.
rc=0; IFS= read -r -d '' -N1 -t $((ttl + 5)) stray <&3 || rc=$?
closed_ms=$((($(date +%s%N) - moved_at) / 1000000))
[ "$rc" -eq 1 ] || die "A's old connection was not closed within $((ttl + 5)) s (read status $rc)"
echo "instances: A closed the moved device's old connection ${closed_ms} ms after the move (--registry-ttl-s $ttl: a walk every $((ttl * 1000 / 3)) ms)"
[ "$closed_ms" -le $((ttl * 1000 / 3 + 2000)) ] || die "closing took ${closed_ms} ms, more than ttl/3 + 2 s"
[ "$(metric "$ma" avlgate_devices_moved_total)" = 1 ] || die "A did not count the move"
[ "$(rcli HGET "avlgate:dev:{$imei}" instance)" = multi-b ] || die "the registry does not name B"
[ "$(rcli HGET "avlgate:dev:{$imei}" epoch)" = "$(psql -c "SELECT owner FROM public.device_state WHERE imei = $imei")" ] ||
  die "the registry's epoch is not B's owner token"
said=$("$avlgate" command send --pg "$conninfo" --redis "$redis_hostport" "$imei" moved-getinfo) ||
  die "command send failed"
case "$said" in *"routed to multi-b "*) ;; *) die "the command was not routed to B: $said" ;; esac
id=$(echo "$said" | awk 'NR == 1 { print $2 }')
frame=$(timeout 10 head -c 33 <&4 | tr -c '[:print:]' '.') || true
case "$frame" in *moved-getinfo*) ;; *) die "the command did not reach the device on B (got '$frame')" ;; esac
[ "$(psql -c "SELECT status FROM public.commands WHERE id = $id")" = sent ] || die "command $id not sent"
echo "instances: the command after the move reached the device through B only"
exec 3<&- 4<&-

# ---- 2. commands to devices on both instances ------------------------------------------------
cat >"$work/instances.haproxy.cfg" <<CFG
global
    maxconn 4000
    stats socket ipv4@127.0.0.1:$sport level admin
defaults
    mode tcp
    option tcpka
    retries 2
    option redispatch 1
    timeout connect 2s
    timeout client 3h
    timeout server 3h
    timeout tunnel 3h
    timeout check 1s
frontend trackers
    bind 127.0.0.1:$hport
    default_backend avlgate
backend avlgate
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server send-proxy-v2 inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
    server multi-a 127.0.0.1:$pa check port $ma
    server multi-b 127.0.0.1:$pb check port $mb
CFG
tw_haproxy_start "$haproxy" "$work/instances.haproxy.cfg" "$work/instances.haproxy.log" "$sport" avlgate 2 ||
  die "the instances are not UP in HAProxy: A's /healthz: $(curl -s "http://127.0.0.1:$ma/healthz"), B's: $(curl -s "http://127.0.0.1:$mb/healthz")"
"$loadgen" --connect "127.0.0.1:$hport" --devices 300 --imei-base 356307042465000 \
  --period-s 1 --records 5 --duration-s 20 --ack-timeout-s 5 --reconnect-ms 200 \
  --verify --pg "$conninfo" >"$work/instances.loadgen.out" 2>&1 &
lg=$!
tw_defer "tw_stop_pid $lg 5"
sleep 4
on() { # instance -> one IMEI the registry places there
  local k
  for k in $(rcli --scan --pattern 'avlgate:dev:{356307042465*}'); do
    if [ "$(rcli HGET "$k" instance)" = "$1" ]; then k=${k#*\{}; echo "${k%\}}"; return 0; fi
  done
  return 1
}
for inst in multi-a multi-b; do
  dev=$(on "$inst") || die "no loadgen device on $inst"
  out=$("$avlgate" command send --pg "$conninfo" --redis "$redis_hostport" --wait 10 "$dev" getver) ||
    die "the command to $dev on $inst was not answered: $out"
  echo "instances: command to $dev on $inst answered: $(echo "$out" | tail -1)"
done

# ---- 3. A is killed; its trackers go to B through HAProxy -----------------------------------
sleep 2
kill -KILL "$pid_a"
echo "instances: SIGKILLed instance A with $(metric "$mb" avlgate_connections_open) devices on B"
rc=0; wait "$lg" || rc=$?
cat "$work/instances.loadgen.out" | grep -E '^(verify|acked|summary)' || true
[ "$rc" -eq 0 ] || die "loadgen exited with $rc"
grep -q '^verify: .* missing=0 duplicated=0 .* OK$' "$work/instances.loadgen.out" || die "verify did not pass"
[ "$(metric "$mb" avlgate_handshakes_total)" -gt 150 ] || die "B did not take A's trackers"
echo "instances: OK"
