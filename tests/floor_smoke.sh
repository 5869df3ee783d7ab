#!/usr/bin/env bash
# floor_smoke.sh — avlgate-floor (bench/floor.c, bench/e2e phase (d)) under avlgate-loadgen.
#
# Starts avlgate-floor (2 shards, --udp) on a free loopback port, runs avlgate-loadgen --drain
# for 2 s with 50 devices over TCP, then over UDP, and asserts for each: exit 0, records
# acknowledged, no errors. Then SIGTERM: the floor exits 0 with its "stopped" line, which
# counts at least as many records as loadgen saw acknowledged (a last ACK may still have been
# on its way), frames and datagrams, and nothing invalid. Also: a second floor on the same port
# is refused (exit 1), and a bad option is a usage error (exit 2). No database.
#
# usage: floor_smoke.sh FLOOR LOADGEN WORKDIR
set -euo pipefail
floor=$1 loadgen=$2 work=$3
. "$(dirname "$0")/lib/throwaway.sh"

die() { echo "floor_smoke: $*" >&2; exit 1; }
mkdir -p "$work"
port=$(tw_free_port)
log=$work/floor_smoke.floor.log

"$floor" --listen "127.0.0.1:$port" --shards 2 --udp --conns-max 1024 --bufs 256 >"$log" 2>&1 &
floor_pid=$!
# shellcheck disable=SC2016 # floor_pid is read at exit
tw_defer 'tw_stop_pid "$floor_pid"'
tw_wait_port "$port" "$floor_pid" 10 || { cat "$log" >&2; die "the floor did not listen"; }

# A second one on the same port must not share it (SO_REUSEPORT would let it).
set +e
"$floor" --listen "127.0.0.1:$port" >"$work/floor_smoke.second.log" 2>&1
status=$?
"$floor" --bufs 3 >/dev/null 2>&1
usage_status=$?
set -e
[ "$status" -eq 1 ] || die "a second floor on port $port exited with $status, not 1"
grep -q "cannot take 127.0.0.1:$port" "$work/floor_smoke.second.log" ||
  die "a second floor on port $port did not say why"
[ "$usage_status" -eq 2 ] || die "--bufs 3 exited with $usage_status, not 2"

value() { grep -o " $2=[0-9]*" "$1" | head -1 | cut -d= -f2; }
drain() { # TRANSPORT_ARGS... ; output in $work/floor_smoke.$name.out
  local name=$1 out
  shift
  out=$work/floor_smoke.$name.out
  "$loadgen" "$@" --connect "127.0.0.1:$port" --devices 50 --records 10 --drain \
    --duration-s 2 --warmup-s 0 >"$out" 2>&1 || { cat "$out" >&2; die "$name: loadgen failed"; }
  tail -n 1 "$out"
  [ "$(value "$out" records_acked)" -gt 0 ] || die "$name: nothing acknowledged"
  [ "$(value "$out" errors)" -eq 0 ] || die "$name: loadgen counted errors"
}
drain tcp
drain udp --udp

kill -TERM "$floor_pid"
status=0
wait "$floor_pid" || status=$?
floor_pid=
cat "$log"
[ "$status" -eq 0 ] || die "the floor exited with $status after SIGTERM"
grep -q '^avlgate-floor: stopped ' "$log" || die "no 'stopped' line"
[ "$(value "$log" handshakes)" -ge 50 ] || die "fewer handshakes than devices"
[ "$(value "$log" frames_acked)" -gt 0 ] || die "no frame acknowledged"
[ "$(value "$log" datagrams_acked)" -gt 0 ] || die "no datagram acknowledged"
[ "$(value "$log" records_acked)" -ge "$(value "$work/floor_smoke.tcp.out" records_acked)" ] ||
  die "TCP: the floor acknowledged fewer records than loadgen counted"
[ "$(value "$log" datagram_records_acked)" -ge "$(value "$work/floor_smoke.udp.out" records_acked)" ] ||
  die "UDP: the floor acknowledged fewer records than loadgen counted"
[ "$(value "$log" frames_invalid)" -eq 0 ] || die "frames refused"
[ "$(value "$log" datagrams_invalid)" -eq 0 ] || die "datagrams refused"
echo "floor_smoke: OK"
