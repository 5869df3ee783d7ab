#!/usr/bin/env bash
# config_cli.sh — `avlgate run`'s configuration with the real binary, no servers: precedence
# (flag > AVLGATE_* > --config file > default) read back with --print-config, the file's
# syntax, --print-config's output as a config file again, clear errors (unknown key with its
# line, bad values, unknown option, missing file, a port another process holds), a password
# masked, and a database that does not answer at start: retried with backoff and said so,
# not an exit.
# usage: config_cli.sh AVLGATE
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 AVLGATE" >&2; exit 2; }
avlgate=$1
. "$(dirname "$0")/../lib/throwaway.sh"
tw_tmpdir cli-config
tmp=$TW_TMP
# Only what this test sets: no AVLGATE_* from the caller's environment.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep '^AVLGATE_' || true)

passed=0
fail() {
    echo "FAIL: $1" >&2
    echo "--- stdout:" >&2; cat "$tmp/out" >&2 2>/dev/null || true
    echo "--- stderr:" >&2; cat "$tmp/err" >&2 2>/dev/null || true
    echo "$passed passed, 1 failed" >&2
    exit 1
}
ok() { passed=$((passed + 1)); }
run() { rc=0; "$avlgate" run "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?; }
want_rc() { [ "$rc" -eq "$1" ] || fail "$2: exit status $rc, want $1"; ok; }
want_line() { grep -qxF -- "$1" "$tmp/out" || fail "$2: no line '$1'"; ok; }
want_err() { grep -qF -- "$1" "$tmp/err" || fail "$2: stderr lacks '$1'"; ok; }

# 1. Defaults and sources.
run --print-config
want_rc 0 "print-config"
want_line "batch-rows = 4000  # default" "default batch-rows"
want_line "devices = any  # default" "default devices"
want_line "# pg =   (not set)" "pg not set"

cat >"$tmp/a.conf" <<'CONF'
# a comment
batch-rows = 55   # a trailing comment
shards=3
batch-ms = 7
pg = "host=10.0.0.5 port=5432 password=s3cret dbname=fleet"
pin = yes
devices = known
instance = gw-1
CONF
AVLGATE_SHARDS=5 AVLGATE_BATCH_MS=8 run --config "$tmp/a.conf" --batch-ms 9 --print-config
want_rc 0 "print-config with all sources"
want_line "batch-rows = 55  # file" "file value"
want_line "shards = 5  # environment" "environment beats file"
want_line "batch-ms = 9  # flag" "flag beats environment and file"
want_line "pin = true  # file" "switch from the file"
want_line "devices = known  # file" "devices from the file"
want_line "instance = gw-1  # file" "instance from the file"
want_line "pg = password=*** dbname=fleet host=10.0.0.5 port=5432  # file" "password masked (libpq order)"
run --print-config --pg "host=a sslpassword=k password='my secret' application_name=x"
want_line "pg = password=*** host=a application_name=x sslpassword=***  # flag" "both passwords masked"
grep -q "secret\|=k" "$tmp/out" && fail "a password was printed"
ok
run --print-config --pg "postgresql://u:hunter2@10.0.0.9:5433/fleet"
grep -q hunter2 "$tmp/out" && fail "a URI's password was printed"
ok
want_line "pg = user=u password=*** dbname=fleet host=10.0.0.9 port=5433  # flag" "URI parsed and masked"
grep -q s3cret "$tmp/out" && fail "the password was printed"
ok
# The Redis password: from each source, always shown as ***.
printf 'redis-password = file-redis-pw\n' >"$tmp/r.conf"
run --print-config --config "$tmp/r.conf"
want_line "redis-password = ***  # file" "redis password from the file, masked"
AVLGATE_REDIS_PASSWORD=env-redis-pw run --print-config --config "$tmp/r.conf"
want_line "redis-password = ***  # environment" "redis password from the environment, masked"
run --print-config --redis-password flag-redis-pw
want_line "redis-password = ***  # flag" "redis password from a flag, masked"
grep -q "redis-pw" "$tmp/out" && fail "the redis password was printed"
ok
run --print-config
want_line "# redis-password =   (not set)" "no redis password by default"

# 2. --print-config's output is a config file that gives the same configuration.
AVLGATE_PIN=true run --print-config --conns-max 123 --listen 127.0.0.1:1 --pg 'host=127.0.0.1'
cp "$tmp/out" "$tmp/printed.conf"
run --config "$tmp/printed.conf" --print-config
want_rc 0 "the printed configuration as a file"
want_line "conns-max = 123  # file" "round trip conns-max"
want_line "pin = true  # file" "round trip pin"
want_line "listen = 127.0.0.1:1  # file" "round trip listen"
AVLGATE_CONFIG="$tmp/printed.conf" run --print-config
want_line "conns-max = 123  # file" "AVLGATE_CONFIG names the file"

# A '#' or edge spaces survive the round trip through --print-config (quoted), and a quoted
# value keeps its '#'.
run --print-config --instance gw1 --apply-schema "/tmp/a #b"
want_line 'apply-schema = "/tmp/a #b"  # flag' "a value with # is quoted"
cp "$tmp/out" "$tmp/quoted.conf"
run --config "$tmp/quoted.conf" --print-config
want_line 'apply-schema = "/tmp/a #b"  # file' "quoted value read back"
printf 'apply-schema = "x" y\n' >"$tmp/q.conf"
run --config "$tmp/q.conf" --print-config
want_rc 2 "text after the closing quote"
want_err "text after the closing quote" "after the quote"

# A quoted value holding '"' or '\' is written escaped and reads back whole; a value with a line
# break cannot be written in a file and is said in a comment.
run --print-config --apply-schema 'a"#b\c '
want_line 'apply-schema = "a\"#b\\c "  # flag' "quote and backslash escaped"
cp "$tmp/out" "$tmp/esc.conf"
run --config "$tmp/esc.conf" --print-config
want_rc 0 "escaped value read back"
want_line 'apply-schema = "a\"#b\\c "  # file' "escaped value round trip"
printf 'apply-schema = "C:\\dir\\x"\n' >"$tmp/bs.conf"
run --config "$tmp/bs.conf" --print-config
want_line 'apply-schema = C:\dir\x  # file' "a lone backslash stays a backslash"
run --print-config --apply-schema "$(printf 'a\nb')"
want_rc 0 "a value with a line break"
want_line '# apply-schema = (holds a line break: set it with the flag or the environment)  # flag' \
  "a line break said, not written"
# A value the file reader takes can need a longer line once quoted: said, not written cut.
long=$(head -c 4070 /dev/zero | tr '\0' x)
printf 'apply-schema = #%s\n' "$long" >"$tmp/long.conf"
run --config "$tmp/long.conf" --print-config
want_rc 0 "a value near the line limit"
want_line '# apply-schema = (too long for a config file line: set it with the flag or the environment)  # file' \
  "a line too long once quoted is said"

# pg: a conninfo that parses to nothing prints as postgresql:// (it used to read before its
# buffer); a value with a tab is quoted for libpq and reads back; a very long one is said.
run --print-config --pg postgresql://
want_rc 0 "pg that parses to nothing"
want_line "pg = postgresql://  # flag" "empty conninfo printed as a URI"
run --print-config --pg "host=127.0.0.1 application_name='a$(printf '\t')b'"
want_line "pg = host=127.0.0.1 application_name='a$(printf '\t')b'  # flag" "tab quoted for libpq"
cp "$tmp/out" "$tmp/tab.conf"
run --config "$tmp/tab.conf" --print-config
want_line "pg = host=127.0.0.1 application_name='a$(printf '\t')b'  # file" "tab round trip"
run --print-config --pg "host=127.0.0.1 application_name=$(head -c 20000 /dev/zero | tr '\0' x)"
want_rc 0 "a very long pg"
want_line "# pg = (too long for a config file line: set it with the flag or the environment)  # flag" \
  "a pg too long to print is said"

# 3. Errors: named, with the source, exit 2 (1 for a file that cannot be read).
printf 'batch-rows = 5\nbatchrows = 5\n' >"$tmp/bad.conf"
run --config "$tmp/bad.conf" --pg x
want_rc 2 "unknown key"
want_err "config $tmp/bad.conf:2: unknown key 'batchrows'" "unknown key with file and line"
printf 'shards = many\n' >"$tmp/bad2.conf"
run --config "$tmp/bad2.conf" --pg x
want_rc 2 "bad value in the file"
want_err "config $tmp/bad2.conf:1: shards: bad value 'many' (want a whole number 1..256)" "file value"
printf 'just words\n' >"$tmp/bad3.conf"
run --config "$tmp/bad3.conf" --pg x
want_rc 2 "not key = value"
want_err "want 'key = value'" "line without ="
AVLGATE_BATCH_ROWS=0 run --pg x
want_rc 2 "bad environment value"
want_err "environment AVLGATE_BATCH_ROWS: bad value '0' (want a whole number 1..1000000)" "env value"
AVLGATE_PIN=maybe run --pg x
want_rc 2 "bad switch value"
want_err "environment AVLGATE_PIN: bad value 'maybe'" "env switch"
run --pg x --bufs 1000
want_rc 2 "bufs not a power of two"
want_err "--bufs 1000 is not a power of two" "bufs"
run --pg x --devices some
want_rc 2 "bad devices"
want_err "--devices: bad value 'some' (want any or known)" "devices"
run --pg x --instance 'a b'
want_rc 2 "bad instance"
want_err "bad --instance 'a b'" "instance"
run --pg x --proxy-protocol
want_rc 2 "proxy-protocol without proxy-from"
want_err "--proxy-protocol and --proxy-from go together" "proxy-protocol alone"
run --pg x --proxy-from 10.0.0.0/8
want_rc 2 "proxy-from without proxy-protocol"
want_err "--proxy-protocol and --proxy-from go together" "proxy-from alone"
run --pg x --proxy-protocol --proxy-from 10.1.0.0/8
want_rc 2 "bad proxy-from"
want_err "bad --proxy-from '10.1.0.0/8'" "proxy-from with host bits"
run --pg x --no-such-option
want_rc 2 "unknown option"
want_err "unknown option '--no-such-option'" "unknown option"
run --pg x --pin=true
want_rc 2 "a switch with a value"
want_err "--pin takes no value" "switch value"
run --pg x --conn 5
want_rc 2 "an abbreviated option"
want_err "unknown option '--conn' (did you mean --conns-max?)" "abbreviation"
run --pg x --bufs 1000 --print-config
want_rc 2 "print-config checks what run checks"
run --pg 'host=127.0.0.1 port=1' --listen 127.0.0.1:0
want_rc 2 "port 0"
want_err "bad --listen '127.0.0.1:0'" "port 0 refused"
run --batch-rows 5
want_rc 2 "no pg"
want_err "--pg CONNINFO is required" "pg required"
run --config "$tmp/missing.conf" --pg x
want_rc 1 "missing file"
want_err "config $tmp/missing.conf: No such file or directory" "missing file"
AVLGATE_BATCHROWS=1 run --print-config
want_rc 0 "unknown AVLGATE_ variable"
want_err "unknown environment variable ignored\" name=AVLGATE_BATCHROWS" "misspelt variable said"

# 4. Ports another process holds: the device port (whatever listens there, SO_REUSEPORT or
# not) and the metrics port. Checked before the database is tried.
port=$(tw_free_port)
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)' "$port" &
holder=$!
tw_defer "tw_stop_pid $holder"
tw_wait_port "$port" "$holder" 5 || fail "the port holder did not listen on $port"
run --pg 'host=127.0.0.1 port=1' --listen "127.0.0.1:$port"
want_rc 1 "device port in use"
want_err "cannot listen on 127.0.0.1:$port: Address already in use (another process has the port)" "device port"
run --pg 'host=127.0.0.1 port=1' --listen "127.0.0.1:$(tw_free_port)" --metrics "127.0.0.1:$port"
want_rc 1 "metrics port in use"
want_err "(another process has the port)" "metrics port"

# 5. A database that does not answer at start: retried with backoff, said, stopped by SIGTERM.
mport=$(tw_free_port)
"$avlgate" run --pg 'host=127.0.0.1 port=1 connect_timeout=1' --listen "127.0.0.1:$(tw_free_port)" \
    --metrics "127.0.0.1:$mport" >"$tmp/out" 2>"$tmp/err" &
gw=$!
tw_defer "tw_stop_pid $gw"
for _ in $(seq 1 50); do grep -q "database unreachable at start; retrying" "$tmp/err" && break; sleep 0.1; done
want_err "database unreachable at start; retrying" "unreachable database said"
kill -0 "$gw" 2>/dev/null || fail "the gateway exited while the database was unreachable"
ok
# A probe meanwhile gets 503 "starting", not a hang.
exec 3<>"/dev/tcp/127.0.0.1/$mport" || fail "metrics port not open while starting"
printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' >&3
resp=$(timeout 5 cat <&3 || true)
exec 3<&-
case "$resp" in
*"HTTP/1.1 503 Service Unavailable"*"starting: database unreachable"*) ok ;;
*) fail "healthz while starting: '$resp'" ;;
esac
kill -TERM "$gw"
rc=0
wait "$gw" || rc=$?
want_rc 0 "SIGTERM while waiting for the database"

echo "config_cli: $passed checks passed"
