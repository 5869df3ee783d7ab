#!/usr/bin/env bash
# decode_cli.sh — runs the real avlgate binary: `decode` on the sample files, on stdin, on a
# file with a bad packet and on a missing file; `version`; an unknown command. Checks exit
# statuses and output with grep and wc.
# usage: decode_cli.sh AVLGATE DATA_DIR
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 AVLGATE DATA_DIR" >&2
    exit 2
fi
avlgate=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
fail() {
    echo "FAIL: $1" >&2
    echo "$passed passed, 1 failed" >&2
    exit 1
}
ok() {
    passed=$((passed + 1))
}

# Runs avlgate with the given arguments, stdout to $tmp/out, stderr to $tmp/err; sets $rc.
run() {
    rc=0
    "$avlgate" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
}
lines() {
    wc -l <"$1" | tr -d ' '
}
packet_lines() {
    grep -cv '^[[:space:]]*\(#\|$\)' "$1"
}

handshake=000f333536333037303432343431303133
codec8=000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e0f01
codec8+=f10000601a014e0000000000000000010000c7cf
nack_bad_crc=00000000000000100e011100000008035209308145246801000032ac

# 1. The sample file decodes: exit 0, one object per frame (two lines hold two frames).
run decode "$data/samples.hex"
[ "$rc" -eq 0 ] || fail "decode samples.hex exits $rc, want 0: $(head -c 300 "$tmp/err")"
ok
want=$(($(packet_lines "$data/samples.hex") + 2))
[ "$(lines "$tmp/out")" -eq "$want" ] ||
    fail "samples.hex gives $(lines "$tmp/out") lines, want $want"
ok
! grep -q '"ok":false' "$tmp/out" || fail "samples.hex has an ok:false object"
ok
[ "$(grep -c '^{"line":[0-9]*,"ok":true,.*}$' "$tmp/out")" -eq "$want" ] ||
    fail "samples.hex: not every line is an ok:true object"
ok
grep -q '"kind":"ping"' "$tmp/out" || fail "samples.hex: no ping object"
ok
[ ! -s "$tmp/err" ] || fail "samples.hex: stderr is not empty"
ok
if command -v python3 >/dev/null; then
    python3 -c 'import json, sys; [json.loads(l) for l in sys.stdin]' <"$tmp/out" ||
        fail "samples.hex: output is not JSON per line"
    ok
fi

# 2. The UDP samples.
run decode --udp "$data/samples_udp.hex"
[ "$rc" -eq 0 ] || fail "decode --udp samples_udp.hex exits $rc, want 0"
ok
[ "$(lines "$tmp/out")" -eq "$(packet_lines "$data/samples_udp.hex")" ] ||
    fail "samples_udp.hex: one object per datagram"
ok
grep -q '"kind":"udp_ack"' "$tmp/out" || fail "samples_udp.hex: no udp_ack object"
ok

# 3. One bad packet among good ones: exit 1, and that line's object says ok:false.
printf '# a good packet, a bad one, a good one\n%s\n%s\n%s\n' "$codec8" "$nack_bad_crc" \
    "$handshake" >"$tmp/bad.hex"
run decode "$tmp/bad.hex"
[ "$rc" -eq 1 ] || fail "decode bad.hex exits $rc, want 1"
ok
grep -q '^{"line":3,"ok":false,"error":"crc_mismatch"}$' "$tmp/out" ||
    fail "bad.hex: line 3 is not ok:false crc_mismatch"
ok
[ "$(grep -c '"ok":true' "$tmp/out")" -eq 2 ] || fail "bad.hex: the good lines are not decoded"
ok

# 4. A missing file: exit 2, its name on stderr.
run decode "$tmp/no-such-file.hex"
[ "$rc" -eq 2 ] || fail "decode of a missing file exits $rc, want 2"
ok
grep -q "no-such-file.hex" "$tmp/err" || fail "missing file: its name is not on stderr"
ok

# 5. Standard input, with no file and with "-".
rc=0
printf 'ff%s\n' "$handshake" | "$avlgate" decode >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 0 ] || fail "decode from stdin exits $rc, want 0"
ok
[ "$(lines "$tmp/out")" -eq 2 ] || fail "stdin: ff + handshake does not give two objects"
ok
grep -q '"imei":"356307042441013"' "$tmp/out" || fail "stdin: no imei object"
ok
rc=0
printf '0x %s\n' "$codec8" | "$avlgate" decode - >"$tmp/out" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 0 ] || fail "decode - exits $rc, want 0"
ok
grep -q '"codec":"8","records":\[{"ts_ms":1560161086000,' "$tmp/out" ||
    fail "decode -: codec 8 example not decoded"
ok

# 6. Usage errors.
run decode --no-such-option
[ "$rc" -eq 2 ] || fail "an unknown option exits $rc, want 2"
ok
run decode --frame-bytes-max nope "$data/samples.hex"
[ "$rc" -eq 2 ] || fail "a bad --frame-bytes-max exits $rc, want 2"
ok

# 7. A line far past the bound gives line_too_long, not a crash.
{
    head -c $((34 * 1024 * 1024)) /dev/zero | tr '\0' '0'
    printf '\n%s\n' "$handshake"
} >"$tmp/long.hex"
run decode "$tmp/long.hex"
[ "$rc" -eq 1 ] || fail "a too-long line exits $rc, want 1"
ok
grep -q '^{"line":1,"ok":false,"error":"line_too_long"}$' "$tmp/out" ||
    fail "a too-long line does not give line_too_long"
ok
grep -q '^{"line":2,"ok":true,"kind":"imei"' "$tmp/out" || fail "the line after a long one is lost"
ok

# 8. version, help, and an unknown command.
run version
[ "$rc" -eq 0 ] || fail "version exits $rc, want 0"
ok
grep -q '^avlgate [0-9][0-9.]*$' "$tmp/out" || fail "version does not print 'avlgate <version>'"
ok
run help
[ "$rc" -eq 0 ] || fail "help exits $rc, want 0"
ok
grep -q 'decode' "$tmp/out" || fail "help does not name decode"
ok
run no-such-command
[ "$rc" -eq 2 ] || fail "an unknown command exits $rc, want 2"
ok
grep -q 'usage' "$tmp/err" || fail "an unknown command does not print the usage on stderr"
ok
run
[ "$rc" -eq 2 ] || fail "no command exits $rc, want 2"
ok

echo "$passed passed, 0 failed"
