# tests/lib/throwaway.sh — throwaway PostgreSQL and Redis, the gateway on a loopback port, and
# cleaning up after them: the one copy of that block for the shell scripts of bench/, loadgen/
# and tests/. Source it from bash (`. "$top/tests/lib/throwaway.sh"`); it works under
# `set -euo pipefail` and sets no shell option itself.
#
# Sourcing only defines the functions below and TW_TOP (the repository root). The first
# function that starts or makes something installs `trap tw_cleanup EXIT`; from then on a
# script must not set an EXIT trap of its own: its clean-up goes through tw_defer. At exit,
# tw_cleanup runs every clean-up step in the reverse order of registration (the last thing
# started is stopped first), each step's failure ignored, and the script's exit status kept.
# Only tw_free_port prints on stdout; what goes wrong is said on stderr.
#
#   tw_tmpdir NAME
#       Makes /tmp/avlgate-NAME.XXXXXX, mode 755 (a PostgreSQL in it runs as `postgres` when
#       we are root, and must reach it), and sets TW_TMP to it. At exit: removed.
#   tw_pg_start DIR [keep]
#       A throwaway PostgreSQL in DIR (tests/pg/pgtmp.sh start: where its files go is said
#       there; a server whose files are there already starts on them). Sets TW_PG (its libpq
#       conninfo, database avlgate) and TW_PGDIR. At exit: `pgtmp.sh remove DIR` (stopped; its
#       data and logs deleted, and DIR unless it holds other files); with keep, `pgtmp.sh stop
#       DIR` (stopped, its files kept for the next start).
#   tw_pg_stop
#       Fast shutdown of that server now (pgtmp.sh stop); its files go at exit.
#   tw_redis_start DIR
#       A throwaway Redis in DIR (tests/redis/redistmp.sh start). Sets TW_REDIS (127.0.0.1:PORT)
#       and TW_REDISDIR. At exit: redistmp.sh stop DIR.
#   tw_redis_stop
#       Stops that server now.
#   tw_schema CONNINFO [DIR]
#       Applies every DIR/*.sql (default: schema/postgres), in byte order of their names, with
#       psql in one session with client_min_messages = warning, stopping at the first error
#       (returns 1). For a database that needs the schema before any gateway runs; a gateway
#       started with `avlgate run --apply-schema DIR` applies the same files itself (in the
#       same order, NOTICEs hidden the same way), then checks the tables and makes the
#       partitions of the next 7 days.
#   tw_gateway_start AVLGATE PORT LOG [RUN_ARGS...]
#       `AVLGATE run --listen 127.0.0.1:PORT RUN_ARGS...` in the background, stdout and stderr
#       to LOG; sets TW_GW (its pid) and waits until the port accepts a connection. When the
#       gateway exits first or does not listen within 30 s: LOG and why on stderr, returns 1.
#       At exit: SIGTERM (the gateway drains), SIGKILL if it still runs 30 s later.
#   tw_gateway_running
#       True while that gateway runs.
#   tw_gateway_stop
#       SIGTERM to it and waits for it; returns its exit status (0 when none was started);
#       empties TW_GW.
#   tw_wait_port PORT [PID] [SECONDS]
#       Waits until 127.0.0.1:PORT accepts a TCP connection (polled every 0.1 s, at most
#       SECONDS, default 30). Returns 0 then; 1 when process PID exits first; 2 on time-out.
#   tw_free_port
#       Prints a loopback TCP port that is free now.
#   tw_stop_pid PID [SECONDS]
#       SIGTERM to PID, waits up to SECONDS (default 10) for it to exit, then SIGKILL; reaps it
#       when it is our child. An empty PID or a process already gone: nothing. Returns 0.
#   tw_defer COMMAND
#       Registers COMMAND (a string, eval'ed at exit: variables in single quotes are read then)
#       as a clean-up step.
#   tw_haproxy_start HAPROXY CFG LOG STATS_PORT BACKEND SERVERS
#       Checks CFG (`haproxy -c`), runs `HAPROXY -db -f CFG` in the background, output to LOG,
#       sets TW_HAPROXY (its pid) and waits up to 20 s until SERVERS servers of BACKEND are UP
#       in `show stat` on its stats socket, 127.0.0.1:STATS_PORT (their health checks passed;
#       no probe of a frontend, which HAProxy would pass on to a server). When the config is
#       bad, HAProxy exits or they are not UP: LOG or the last `show stat` on stderr, returns 1.
#       At exit: stopped.
#   tw_haproxy_cmd STATS_PORT COMMAND
#       One command to that runtime API; its answer on stdout.
#   tw_find_psql
#       When psql is not on PATH, appends the PostgreSQL server's bin directory to PATH (pgtmp.sh
#       finds the server the same way).

TW_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TW_PGTMP=$TW_TOP/tests/pg/pgtmp.sh
TW_REDISTMP=$TW_TOP/tests/redis/redistmp.sh
TW_TMP= TW_PG= TW_PGDIR= TW_REDIS= TW_REDISDIR= TW_GW= TW_HAPROXY=
TW_AT_EXIT=() # the clean-up steps, run last first
TW_TRAPPED=0 TW_GW_DEFERRED=0

tw_defer() {
  if [ "$TW_TRAPPED" = 0 ]; then
    trap tw_cleanup EXIT
    TW_TRAPPED=1
  fi
  TW_AT_EXIT+=("$1")
}

tw_cleanup() {
  set +e
  local i
  for ((i = ${#TW_AT_EXIT[@]} - 1; i >= 0; i--)); do
    eval "${TW_AT_EXIT[i]}"
  done
  TW_AT_EXIT=()
}

tw_tmpdir() {
  TW_TMP=$(mktemp -d "/tmp/avlgate-$1.XXXXXX") || return 1
  tw_defer "rm -rf $(printf %q "$TW_TMP")"
  chmod 755 "$TW_TMP"
}

tw_free_port() {
  python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

tw_stop_pid() {
  local pid=${1:-} seconds=${2:-10} i
  [ -n "$pid" ] || return 0
  if kill -TERM "$pid" 2>/dev/null; then
    for ((i = 0; i < seconds * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

tw_pg_start() {
  TW_PGDIR=$1
  local end=remove
  [ "${2:-}" = keep ] && end=stop
  tw_defer "\"\$TW_PGTMP\" $end $(printf %q "$TW_PGDIR") >/dev/null"
  TW_PG=$("$TW_PGTMP" start "$TW_PGDIR") || return 1
}

tw_pg_stop() {
  "$TW_PGTMP" stop "$TW_PGDIR" >/dev/null
}

tw_redis_start() {
  TW_REDISDIR=$1
  tw_defer "\"\$TW_REDISTMP\" stop $(printf %q "$TW_REDISDIR") >/dev/null 2>&1"
  TW_REDIS=$("$TW_REDISTMP" start "$TW_REDISDIR") || return 1
}

tw_redis_stop() {
  "$TW_REDISTMP" stop "$TW_REDISDIR" >/dev/null 2>&1
}

tw_find_psql() {
  command -v psql >/dev/null && return 0
  PATH=$PATH:$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -1)
}

tw_schema() {
  local conninfo=$1 dir=${2:-$TW_TOP/schema/postgres} f files=()
  # Byte order of the names, as `avlgate run --apply-schema` sorts them (strcmp).
  while IFS= read -r f; do
    if [ -n "$f" ]; then files+=(-f "$dir/$f"); fi
  done < <(shopt -s nullglob && cd "$dir" && printf '%s\n' *.sql | LC_ALL=C sort)
  if [ ${#files[@]} -eq 0 ]; then
    echo "throwaway: schema dir $dir: no .sql files" >&2
    return 1
  fi
  psql "$conninfo" -X -q -v ON_ERROR_STOP=1 -c "SET client_min_messages = warning" \
    "${files[@]}" >/dev/null || return 1
}

tw_wait_port() {
  local port=$1 pid=${2:-} seconds=${3:-30} i
  for ((i = 0; i < seconds * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 2
}

tw_gateway_start() {
  local avlgate=$1 port=$2 log=$3 rc=0
  shift 3
  if [ "$TW_GW_DEFERRED" = 0 ]; then
    tw_defer 'tw_stop_pid "$TW_GW" 30; TW_GW='
    TW_GW_DEFERRED=1
  fi
  "$avlgate" run --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  TW_GW=$!
  tw_wait_port "$port" "$TW_GW" || rc=$?
  [ "$rc" -eq 0 ] && return 0
  cat "$log" >&2
  if [ "$rc" -eq 1 ]; then
    echo "throwaway: the gateway exited before listening on 127.0.0.1:$port (log: $log)" >&2
  else
    echo "throwaway: the gateway did not listen on 127.0.0.1:$port within 30 s (log: $log)" >&2
  fi
  return 1
}

tw_gateway_running() {
  [ -n "$TW_GW" ] && kill -0 "$TW_GW" 2>/dev/null
}

tw_gateway_stop() {
  local rc=0
  [ -n "$TW_GW" ] || return 0
  kill -TERM "$TW_GW" 2>/dev/null || true
  wait "$TW_GW" || rc=$?
  TW_GW=
  return "$rc"
}

tw_haproxy_cmd() (
  exec 4<>"/dev/tcp/127.0.0.1/$1"
  printf '%s\n' "$2" >&4
  cat <&4
)

tw_haproxy_start() {
  local haproxy=$1 cfg=$2 log=$3 sport=$4 backend=$5 servers=$6 up=0 i stats
  "$haproxy" -c -q -f "$cfg" || { echo "throwaway: $cfg is not a valid HAProxy config" >&2; return 1; }
  "$haproxy" -db -f "$cfg" >"$log" 2>&1 &
  TW_HAPROXY=$!
  tw_defer 'tw_stop_pid "$TW_HAPROXY" 5'
  for ((i = 0; i < 100; i++)); do
    if ! kill -0 "$TW_HAPROXY" 2>/dev/null; then
      cat "$log" >&2
      echo "throwaway: haproxy exited" >&2
      return 1
    fi
    stats=$(tw_haproxy_cmd "$sport" "show stat" 2>/dev/null) || stats=
    up=$(awk -F, -v b="$backend" '$1 == b && $2 != "BACKEND" && $2 != "FRONTEND" && $18 == "UP"' \
      <<<"$stats" | wc -l)
    [ "$up" -ge "$servers" ] && return 0
    sleep 0.2
  done
  printf '%s\n' "$stats" >&2
  echo "throwaway: $up of $servers servers of $backend UP in HAProxy after 20 s" >&2
  return 1
}
