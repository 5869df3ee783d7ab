#!/usr/bin/env bash
# dstack.sh — avlgate's business plane: Directus 11.3.5 (pinned in package.json and
# package-lock.json) against the same PostgreSQL and Redis as the gateway, kept in a directory
# of the caller's choosing. Used by `make demo-directus` and the Directus tests.
#
#   dstack.sh install                  node_modules as package-lock.json says (npm ci), cached
#                                      by the lockfile's hash (see below)
#   dstack.sh setup DIR CONNINFO REDIS [PORT]
#                                      DIR/directus.env from directus.env.template (random
#                                      KEY, SECRET, admin token and passwords, kept in
#                                      DIR/credentials, mode 0600), then
#                                      the one order that works on an empty database and on
#                                      one the gateway already uses: the gateway's SQL
#                                      (schema/postgres, idempotent), `directus bootstrap`,
#                                      `directus schema apply` of schema/directus/snapshot.yaml
#   dstack.sh start DIR                starts Directus (DIR/directus.log), waits for
#                                      /server/ping, then applies schema/directus/access.json
#                                      (the operator role, its policy and permissions, its
#                                      user: access.mjs, idempotent)
#   dstack.sh stop DIR                 stops it (SIGTERM, then SIGKILL after 20 s)
#   dstack.sh drift DIR                `schema apply --dry-run`: exit 0 and prints nothing when
#                                      the database matches the snapshot, else prints the diff
#                                      and exits 1
#   dstack.sh url DIR                  prints the base URL
#   dstack.sh cli DIR ARGS...          the directus CLI with DIR's settings
#
# CONNINFO is a libpq key=value string (host, port, dbname, user, password: what
# tests/pg/pgtmp.sh prints); REDIS is HOST:PORT. PORT defaults to a free one.
# AVLGATE_DIRECTUS_SNAPSHOT and AVLGATE_DIRECTUS_ACCESS name other files, or `none` to skip
# that step (make-snapshot.sh, which makes the snapshot).
#
# The install cache: `npm ci` here takes minutes (1100 packages, 470 MB). After one, the tree
# is kept as a tar named by the hash of package.json + package-lock.json + the Node version in
# ${AVLGATE_CACHE_DIR:-$HOME/.cache/avlgate}; the next install on the machine (a fresh clone, a
# CI run) unpacks it. npm's own download cache (~/.npm) serves a changed lockfile.
# npm 11 runs no dependency install scripts unless allowed, and none is: argon2 and sharp load
# their bundled prebuilt binaries; isolated-vm stays uncompiled, so Flows' "Run Script"
# operation is unavailable (avlgate uses no Flow).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
die() { echo "dstack: $*" >&2; exit 1; }
log() { echo "dstack: $*" >&2; }
. "$top/tests/lib/throwaway.sh" # tw_free_port, tw_stop_pid
snapshot=${AVLGATE_DIRECTUS_SNAPSHOT:-$top/schema/directus/snapshot.yaml}
access=${AVLGATE_DIRECTUS_ACCESS:-$top/schema/directus/access.json}

# The CLI is @directus/api's run.js, not directus/cli.js: that wrapper first asks the npm
# registry for a newer version (a network call and a banner on every command).
cli_js=$here/node_modules/@directus/api/dist/cli/run.js
directus() { # DIR ARGS...: the directus CLI with DIR's settings
  local dir=$1
  shift
  (cd "$here" && CONFIG_PATH="$dir/directus.env" node "$cli_js" "$@")
}

install() {
  command -v node >/dev/null && command -v npm >/dev/null || die "needs node and npm (.ci/install-deps --directus)"
  local key cache_dir cache t0
  key=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)-node$(node -v)
  if [ "$(cat "$here/node_modules/.avlgate-key" 2>/dev/null)" = "$key" ]; then return 0; fi
  cache_dir=${AVLGATE_CACHE_DIR:-$HOME/.cache/avlgate}
  cache=$cache_dir/directus-node_modules-$key.tar
  t0=$(date +%s)
  rm -rf "$here/node_modules"
  if [ -f "$cache" ]; then
    tar -C "$here" -xf "$cache"
    log "node_modules unpacked from $cache in $(($(date +%s) - t0)) s"
  else
    log "npm ci (Directus 11.3.5 and its tree: minutes on a first install)"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    log "npm ci took $(($(date +%s) - t0)) s"
    mkdir -p "$cache_dir"
    rm -f "$cache_dir"/directus-node_modules-*.tar # one tree kept: this lockfile's
    tar -C "$here" -cf "$cache.tmp.$$" node_modules && mv "$cache.tmp.$$" "$cache"
  fi
  echo "$key" >"$here/node_modules/.avlgate-key"
}

conninfo_get() { # CONNINFO KEY: the value of KEY in a libpq key=value string (no quoting)
  local kv
  for kv in $1; do
    if [ "${kv%%=*}" = "$2" ]; then printf '%s' "${kv#*=}"; return 0; fi
  done
}

rand() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | cut -c1-24; }

write_env() { # DIR CONNINFO REDIS PORT
  local dir=$1 ci=$2 redis=$3 port=$4
  umask 077
  if [ ! -f "$dir/credentials" ]; then
    cat >"$dir/credentials" <<EOF
ADMIN_EMAIL=admin@example.com
ADMIN_PASSWORD=$(rand)
ADMIN_TOKEN=$(rand)
OPERATOR_EMAIL=operator@example.com
OPERATOR_PASSWORD=$(rand)
KEY=$(rand)
SECRET=$(rand)
EOF
  fi
  # shellcheck disable=SC1091
  . "$dir/credentials"
  mkdir -p "$dir/uploads"
  local text name value
  text=$(<"$here/directus.env.template")
  local -A fill=(
    [HOST]=127.0.0.1 [PORT]=$port [PUBLIC_URL]=http://127.0.0.1:$port [KEY]=$KEY [SECRET]=$SECRET
    [ADMIN_EMAIL]=$ADMIN_EMAIL [ADMIN_PASSWORD]=$ADMIN_PASSWORD [ADMIN_TOKEN]=$ADMIN_TOKEN
    [DB_HOST]=$(conninfo_get "$ci" host) [DB_PORT]=$(conninfo_get "$ci" port)
    [DB_DATABASE]=$(conninfo_get "$ci" dbname) [DB_USER]=$(conninfo_get "$ci" user)
    [DB_PASSWORD]=$(conninfo_get "$ci" password) [REDIS]=$redis
    [EXTENSIONS_PATH]=$here/extensions [STORAGE_LOCAL_ROOT]=$dir/uploads
  )
  for name in "${!fill[@]}"; do
    value=${fill[$name]}
    text=${text//"@$name@"/"$value"} # quoted: an & in a value stays an & (bash 5.2)
  done
  local unfilled
  unfilled=$(grep -v '^#' <<<"$text" | grep -o '@[A-Z_]*@' | head -1 || true)
  [ -z "$unfilled" ] || die "directus.env.template: $unfilled is not filled"
  printf '%s\n' "$text" >"$dir/directus.env"
  echo "$port" >"$dir/port"
}

setup() { # DIR CONNINFO REDIS [PORT]
  local dir=$1 ci=$2 redis=$3 port=${4:-}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  install # a no-op when node_modules matches the lockfile
  [ -n "$port" ] || port=$(cat "$dir/port" 2>/dev/null || tw_free_port)
  write_env "$dir" "$ci" "$redis" "$port"
  local f
  for f in "$top"/schema/postgres/[0-9]*.sql; do
    PGOPTIONS="-c client_min_messages=warning" psql "$ci" -X -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null || die "applying $f failed"
  done
  directus "$dir" bootstrap >"$dir/bootstrap.log" 2>&1 ||
    { cat "$dir/bootstrap.log" >&2; die "directus bootstrap failed"; }
  # Never an empty or partial snapshot: on 11.3.5 a snapshot lists untracked tables too, and
  # applying one without them drops them (directus/README.md). "none" skips (make-snapshot.sh).
  [ "$snapshot" = none ] && return 0
  directus "$dir" schema apply --yes "$snapshot" >"$dir/apply.log" 2>&1 ||
    { cat "$dir/apply.log" >&2; die "directus schema apply failed"; }
}

url() { echo "http://127.0.0.1:$(cat "$1/port")"; }

start() { # DIR
  local dir=$1 pid i
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/directus.env" ] || die "$dir: not set up (dstack.sh setup)"
  if [ -f "$dir/directus.pid" ] && kill -0 "$(cat "$dir/directus.pid")" 2>/dev/null; then
    die "$dir: already running (pid $(cat "$dir/directus.pid"))"
  fi
  # Not through npx: stopping npx would leave the server running (directus/README.md).
  (cd "$here" && CONFIG_PATH="$dir/directus.env" exec setsid node "$cli_js" start \
    >>"$dir/directus.log" 2>&1 </dev/null) &
  pid=$!
  echo "$pid" >"$dir/directus.pid"
  for ((i = 0; i < 900; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/directus.log" >&2; die "directus exited"; }
    if [ "$(curl -fsS "$(url "$dir")/server/ping" 2>/dev/null)" = pong ]; then break; fi
    sleep 0.1
  done
  [ "$i" -lt 900 ] || { tail -20 "$dir/directus.log" >&2; die "directus did not answer /server/ping in 90 s"; }
  [ "$access" = none ] && return 0
  node "$here/access.mjs" "$dir" "$access" || die "applying $access failed"
}

stop() { # DIR
  local dir=$1
  [ -f "$dir/directus.pid" ] || return 0
  tw_stop_pid "$(cat "$dir/directus.pid")" 20
  rm -f "$dir/directus.pid"
}

drift() { # DIR
  local out
  out=$(directus "$1" schema apply --dry-run "$snapshot" 2>&1) ||
    { echo "$out" >&2; die "schema apply --dry-run failed"; }
  if grep -q "No changes to apply" <<<"$out"; then return 0; fi
  echo "$out"
  return 1
}

cmd=${1:-}
case "$cmd" in
install) install ;;
setup) [ $# -ge 4 ] || die "usage: dstack.sh setup DIR CONNINFO REDIS_HOST:PORT [PORT]"; shift; setup "$@" ;;
start) [ $# -eq 2 ] || die "usage: dstack.sh start DIR"; start "$2" ;;
stop) [ $# -eq 2 ] || die "usage: dstack.sh stop DIR"; stop "$2" ;;
drift) [ $# -eq 2 ] || die "usage: dstack.sh drift DIR"; drift "$2" ;;
url) [ $# -eq 2 ] || die "usage: dstack.sh url DIR"; url "$2" ;;
cli) [ $# -ge 2 ] || die "usage: dstack.sh cli DIR ARGS..."; shift; directus "$@" ;;
*) die "usage: dstack.sh install|setup|start|stop|drift|url|cli ..." ;;
esac
