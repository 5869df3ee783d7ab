#!/usr/bin/env bash
# command_cli.sh — runs the real avlgate binary: `command send` and `command list` against the
# pg fixture's PostgreSQL (a database of its own, schema applied by psql) and the redis
# fixture's Redis. Checks exit statuses, output, the rows in public.commands and the entries
# in the intake streams.
# usage: command_cli.sh AVLGATE PGTMP_SH PGTMP_DIR SCHEMA_DIR REDISTMP_SH REDIS_DIR
set -euo pipefail

if [ $# -ne 6 ]; then
    echo "usage: $0 AVLGATE PGTMP_SH PGTMP_DIR SCHEMA_DIR REDISTMP_SH REDIS_DIR" >&2
    exit 2
fi
avlgate=$1 pgtmp=$2 pgdir=$3 schema=$4 redistmp=$5 redisdir=$6
. "$(dirname "$0")/../lib/throwaway.sh"
tw_find_psql

server=$("$pgtmp" conninfo "$pgdir")
db=test_command_cli_$$
pg="$server dbname=$db"
redis=$("$redistmp" addr "$redisdir")
rport=${redis##*:}
tw_tmpdir cli-command
tmp=$TW_TMP
bg=
imei=356307042441013 # unregistered until case 3
imei2=352093081452251 # never registered

sql() { psql -X -q -tA -v ON_ERROR_STOP=1 "$@"; }
rcli() { redis-cli -h 127.0.0.1 -p "$rport" "$@"; }
cleanup() {
    if [ -n "$bg" ]; then kill "$bg" 2>/dev/null || true; fi
    sql "$server" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    rcli del "avlgate:dev:{$imei}" "avlgate:dev:{$imei2}" avlgate:cmd:gw1 >/dev/null 2>&1 || true
}
tw_defer cleanup

passed=0
fail() {
    echo "FAIL: $1" >&2
    echo "--- stdout:" >&2
    cat "$tmp/out" >&2 2>/dev/null || true
    echo "--- stderr:" >&2
    cat "$tmp/err" >&2 2>/dev/null || true
    echo "$passed passed, 1 failed" >&2
    exit 1
}
ok() { passed=$((passed + 1)); }

# Runs avlgate with the given arguments, stdout to $tmp/out, stderr to $tmp/err; sets $rc.
run() {
    rc=0
    "$avlgate" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
}
want_rc() { [ "$rc" -eq "$1" ] || fail "$2: exit status $rc, want $1"; ok; }
want_out() { grep -qF -- "$1" "$tmp/out" || fail "$2: stdout lacks '$1'"; ok; }
want_err() { grep -qF -- "$1" "$tmp/err" || fail "$2: stderr lacks '$1'"; ok; }
want_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; ok; }
q() { sql "$pg" -c "$1"; }
# The id `send` printed: "command <id> queued for <imei>".
sent_id() { sed -n 's/^command \([0-9][0-9]*\) queued for [0-9]*$/\1/p' "$tmp/out"; }
# Sets the newest row with this payload to the given SET clause after a delay, in the
# background (the CLI is then already polling it).
later() {
    (sleep "$1" && sql "$pg" -c "UPDATE public.commands SET $3 WHERE payload = '$2'" >/dev/null) &
    bg=$!
}

sql "$server" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
    -c "CREATE DATABASE $db" >/dev/null
tw_schema "$pg" "$schema"
rcli del "avlgate:dev:{$imei}" "avlgate:dev:{$imei2}" avlgate:cmd:gw1 >/dev/null

# 1. Usage errors: exit 2, a clear message, no row.
run command send --pg "$pg" 35630704244101 getver
want_rc 2 "14-digit IMEI"
want_err "IMEI must be 15 digits" "14-digit IMEI"
run command send --pg "$pg" 35630704244101x getver
want_rc 2 "IMEI with a letter"
want_err "IMEI must be 15 digits" "IMEI with a letter"
run command send --pg "$pg" "$imei" ""
want_rc 2 "empty text"
want_err "TEXT is empty" "empty text"
run command send --pg "$pg" "$imei" "$(head -c 1025 /dev/zero | tr '\0' a)"
want_rc 2 "1025-byte text"
want_err "longer than 1024 bytes" "1025-byte text"
run command send "$imei" getver
want_rc 2 "missing --pg"
want_err "needs --pg" "missing --pg"
run command send --pg "$pg" --redis nocolon "$imei" getver
want_rc 2 "bad --redis"
run command send --pg "$pg" --wait 0 "$imei" getver
want_rc 2 "--wait 0"
run command bogus
want_rc 2 "unknown subcommand"
want_eq "$(q 'SELECT count(*) FROM public.commands')" 0 "rows after usage errors"

# 2. An unregistered device: the row is pending, nothing is routed, exit 0.
run command send --pg "$pg" --redis "$redis" "$imei" getver
want_rc 0 "unregistered send"
id1=$(sent_id)
[ -n "$id1" ] || fail "unregistered send: no 'command <id> queued for <imei>' line"
ok
want_out "command $id1 queued for $imei" "unregistered send"
want_out "device not connected: delivered when it connects" "unregistered send"
want_eq "$(q "SELECT imei, payload, status, attempts, expires_at IS NULL FROM public.commands WHERE id = $id1")" \
    "$imei|getver|pending|0|t" "unregistered row"
want_eq "$(rcli exists avlgate:cmd:gw1)" 0 "stream after unregistered send"
want_eq "$(rcli --scan --pattern 'avlgate:cmd:*' | wc -l)" 0 "any intake stream after unregistered send"

# 3. A registered device: one entry in its instance's stream with the row's id, IMEI, text.
rcli hset "avlgate:dev:{$imei}" instance gw1 shard 1 epoch 7 >/dev/null
run command send --pg "$pg" --redis "$redis" --expires-s 60 "$imei" "setdigout 1"
want_rc 0 "registered send"
id2=$(sent_id)
want_out "routed to gw1 shard 1" "registered send"
want_eq "$(rcli xlen avlgate:cmd:gw1)" 1 "stream length after registered send"
# redis-cli prints raw replies when piped: the entry id, then field and value on lines of
# their own.
fields=$(rcli xrange avlgate:cmd:gw1 - + | tail -n 6 | paste -sd'|')
want_eq "$fields" "id|$id2|imei|$imei|payload|setdigout 1" "stream entry fields"
want_eq "$(q "SELECT status, expires_at BETWEEN now() + interval '50 s' AND now() + interval '70 s' FROM public.commands WHERE id = $id2")" \
    "pending|t" "registered row and --expires-s"

# 4. --wait, answered after ~0.5 s: prints the answer, exit 0.
later 0.5 wait-answer "status = 'answered', response = 'FW:03.27 ok', answered_at = now()"
run command send --pg "$pg" --wait 10 "$imei2" wait-answer
wait "$bg"; bg=
want_rc 0 "--wait answered"
want_out "FW:03.27 ok" "--wait answered"
want_eq "$(tail -n 1 "$tmp/out")" "FW:03.27 ok" "--wait answered, last line"

# 5. --wait, a non-UTF-8 answer stored as hex: prints hex:..., exit 0.
later 0.3 wait-hex "status = 'answered', response = 'c328ff', response_hex = true, answered_at = now()"
run command send --pg "$pg" --wait 10 "$imei2" wait-hex
wait "$bg"; bg=
want_rc 0 "--wait hex answer"
want_eq "$(tail -n 1 "$tmp/out")" "hex:c328ff" "--wait hex answer"

# 5b. --wait, an answer with control characters (ESC of a colour sequence, BEL, CR, the C1
# control U+009B): printed with each as '.', as `list` shows them; no control byte reaches the
# terminal.
later 0.3 wait-escape "status = 'answered', response = E'ok\\x1b[31mred\\x07\\r\\u009bend', answered_at = now()"
run command send --pg "$pg" --wait 10 "$imei2" wait-escape
wait "$bg"; bg=
want_rc 0 "--wait escaped answer"
want_eq "$(tail -n 1 "$tmp/out")" "ok.[31mred...end" "--wait escaped answer"
LC_ALL=C grep -q $'[\x01-\x09\x0b-\x1f\x7f]\|\xc2[\x80-\x9f]' "$tmp/out" && fail "--wait printed a control character"
ok

# 6. --wait, the row fails: prints the status, exit 1.
later 0.3 wait-failed "status = 'failed', attempts = 3"
run command send --pg "$pg" --wait 10 "$imei2" wait-failed
wait "$bg"; bg=
want_rc 1 "--wait failed"
want_out "failed" "--wait failed"

# 7. --wait, the row expires: exit 1.
later 0.3 wait-expired "status = 'expired'"
run command send --pg "$pg" --wait 10 "$imei2" wait-expired
wait "$bg"; bg=
want_rc 1 "--wait expired"
want_out "expired" "--wait expired"

# 8. --wait runs out: exit 1 after about the time asked.
start=$(date +%s%N)
run command send --pg "$pg" --wait 0.5 "$imei2" wait-timeout
ms=$((($(date +%s%N) - start) / 1000000))
want_rc 1 "--wait timeout"
want_out "still pending after 0.5 s" "--wait timeout"
[ "$ms" -ge 450 ] && [ "$ms" -lt 5000 ] || fail "--wait 0.5 took $ms ms"
ok

# 9. Nothing listens at the Redis address: still exit 0, the row waits in PostgreSQL.
dead=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run command send --pg "$pg" --redis "127.0.0.1:$dead" "$imei" redis-dead
want_rc 0 "dead redis"
want_out "redis unreachable (127.0.0.1:$dead" "dead redis"
want_out "the command waits in PostgreSQL" "dead redis"
want_eq "$(q "SELECT status FROM public.commands WHERE payload = 'redis-dead'")" pending "dead redis row"

# 9b. A password the server does not expect: AUTH refused, said without the password; exit 0.
run command send --pg "$pg" --redis "$redis" --redis-password not-expected-pw "$imei" redis-auth
want_rc 0 "redis AUTH refused"
want_out "redis unreachable (" "redis AUTH refused"
want_out "AUTH refused: ERR AUTH" "redis AUTH refused"
grep -q not-expected-pw "$tmp/out" "$tmp/err" && fail "the CLI printed the password"
ok
AVLGATE_REDIS_PASSWORD=not-expected-pw run command send --pg "$pg" --redis "$redis" "$imei" redis-auth-env
want_out "AUTH refused: ERR AUTH" "AVLGATE_REDIS_PASSWORD is used"
AVLGATE_REDIS_PASSWORD=not-expected-pw run command send --pg "$pg" --redis "$redis" --redis-password "" "$imei2" redis-auth-none
want_out "device not connected" "an empty --redis-password: no AUTH"

# 10. Redis answers with an error (the registry key has the wrong type): the same.
rcli set "avlgate:dev:{$imei2}" not-a-hash >/dev/null
run command send --pg "$pg" --redis "$redis" "$imei2" redis-error
want_rc 0 "redis error reply"
want_out "redis unreachable (" "redis error reply"
want_out "WRONGTYPE" "redis error reply"
want_eq "$(rcli xlen avlgate:cmd:gw1)" 1 "stream length after the error reply"

# 11. list: newest first, the rows above; --limit; one IMEI.
run command list --pg "$pg"
want_rc 0 "list"
total=$(q 'SELECT count(*) FROM public.commands')
want_eq "$(wc -l <"$tmp/out" | tr -d ' ')" $((total + 1)) "list lines (header + rows)"
head -n 1 "$tmp/out" | grep -q '^ID  *IMEI  *STATUS  *ATTEMPTS  *CREATED  *SENT  *ANSWERED  *PAYLOAD  *RESPONSE$' ||
    fail "list header: $(head -n 1 "$tmp/out")"
ok
newest=$(q 'SELECT max(id) FROM public.commands')
want_eq "$(sed -n 2p "$tmp/out" | awk '{print $1}')" "$newest" "list newest first"
grep -q "^$id1 *$imei *pending *0 .*getver *-\$" "$tmp/out" || fail "list: row $id1"
ok
grep -q "hex:c328ff\$" "$tmp/out" || fail "list: hex response"
ok
grep -q " answered .*FW:03.27 ok\$" "$tmp/out" || fail "list: answered row"
ok
grep -q " failed *3 " "$tmp/out" || fail "list: failed row with 3 attempts"
ok
grep -qF " ok.[31mred...end" "$tmp/out" || fail "list: an answer with control characters"
ok
run command list --pg "$pg" --limit 2
want_rc 0 "list --limit 2"
want_eq "$(wc -l <"$tmp/out" | tr -d ' ')" 3 "list --limit 2 lines"
run command list --pg "$pg" "$imei"
want_rc 0 "list IMEI"
want_eq "$(($(wc -l <"$tmp/out") - 1))" "$(q "SELECT count(*) FROM public.commands WHERE imei = $imei")" \
    "list IMEI rows"
grep -q "$imei2" "$tmp/out" && fail "list IMEI shows another IMEI"
ok
run command list --pg "$pg" 123
want_rc 2 "list bad IMEI"

# --stdin: one connection each, a command per line as it comes, bad lines said and skipped.
imei3=353000000000017 # never registered
rcli hset "avlgate:dev:{$imei}" instance gw1 shard 1 epoch 7 >/dev/null
rcli del "avlgate:dev:{$imei3}" >/dev/null
len_before=$(rcli xlen avlgate:cmd:gw1)
rows_before=$(q 'SELECT count(*) FROM public.commands')
rc=0
printf '%s stdin one\n12345 bad imei\n%s stdin two words\n%s\n%s stdin three\n' \
    "$imei" "$imei" "$imei3" "$imei3" |
    "$avlgate" command send --pg "$pg" --redis "127.0.0.1:$rport" --stdin >"$tmp/out" 2>"$tmp/err" ||
    rc=$?
want_rc 1 "--stdin with bad lines"
want_err "line 2: IMEI must be 15 digits" "--stdin bad IMEI line"
want_err "line 4: TEXT is empty" "--stdin empty text line"
want_eq "$(grep -c '^command [0-9]* queued for ' "$tmp/out")" 3 "--stdin queued lines"
want_eq "$(grep -c '^routed to gw1 shard 1$' "$tmp/out")" 2 "--stdin routed lines"
want_out "device not connected" "--stdin unregistered device"
want_eq "$(q 'SELECT count(*) FROM public.commands')" $((rows_before + 3)) "--stdin rows"
want_eq "$(q "SELECT string_agg(payload, '|' ORDER BY id) FROM public.commands WHERE payload LIKE 'stdin%'")" \
    "stdin one|stdin two words|stdin three" "--stdin payloads in order"
want_eq "$(rcli xlen avlgate:cmd:gw1)" $((len_before + 2)) "--stdin stream entries"
run command send --pg "$pg" --stdin "$imei" extra
want_rc 2 "--stdin with arguments"
run command send --pg "$pg" --stdin --wait 1
want_rc 2 "--stdin with --wait"

echo "command_cli: $passed checks passed"
