#!/usr/bin/env bash
# Runs a libFuzzer target of tests/fuzz/ for a bounded time, from its seeds.
#
# usage: run_fuzz.sh FUZZ_BINARY SHARED_DIR WORK_DIR SECONDS [extra libFuzzer flags...]
#
# The binary's name says which target it is:
#   fuzz_codec   seeds built in WORK_DIR/seeds from every hex packet in SHARED_DIR/corpus/*.tsv
#                (column 6, header skipped) and SHARED_DIR/protocol/vectors.jsonl ("hex"
#                fields), each prefixed with a control byte (see fuzz_codec.c), plus each TCP
#                AVL packet behind an IMEI handshake (a whole session); a dictionary of the
#                codec's tokens.
#   fuzz_http    seeds from tests/fuzz/seeds/http/, dictionary tests/fuzz/fuzz_http.dict.
#   fuzz_config  seeds from tests/fuzz/seeds/config/, dictionary tests/fuzz/fuzz_config.dict.
#   fuzz_proxyhdr seeds from tests/fuzz/seeds/proxyhdr/, dictionary tests/fuzz/fuzz_proxyhdr.dict
#                (SHARED_DIR is not read by these three).
# New inputs go to WORK_DIR/corpus, which is kept between runs; crashes to WORK_DIR/crash-*.
# Exits non-zero when libFuzzer finds a crash, a leak, a timeout or runs out of memory.
set -euo pipefail

if [ $# -lt 4 ]; then
    echo "usage: $0 FUZZ_BINARY SHARED_DIR WORK_DIR SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
fuzzer=$1 shared=$2 work=$3 seconds=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
target=$(basename "$fuzzer")

die() { echo "run_fuzz: $*" >&2; exit 2; }
[ -x "$fuzzer" ] || die "no fuzz binary at $fuzzer"

mkdir -p "$work/corpus"
rm -rf "$work/seeds"
mkdir -p "$work/seeds"

# The codec's seeds and dictionary, from the shared corpus and vectors.
codec_seeds() {
    ls "$shared"/corpus/*.tsv > /dev/null 2>&1 || die "no $shared/corpus/*.tsv"
    [ -f "$shared/protocol/vectors.jsonl" ] || die "no $shared/protocol/vectors.jsonl"

    # Hex text on stdin to bytes on stdout: xxd when installed, else printf with \x escapes.
    if command -v xxd > /dev/null 2>&1; then
        unhex() { xxd -r -p; }
    else
        unhex() { local h; h=$(cat); printf "$(printf '%s' "$h" | sed 's/../\\x&/g')"; }
    fi

    # Every well-formed hex string: the TSV column 6 (header skipped; derived_checks.tsv has no hex
    # column) and the JSONL "hex" fields. Malformed vectors stay in: odd or non-hex text is skipped.
    {
        for f in "$shared"/corpus/*.tsv; do
            case $(basename "$f") in derived_checks.tsv) continue ;; esac
            awk -F'\t' 'NR > 1 && $6 != "" { print $3 "\t" $4 "\t" $6 }' "$f"
        done
        grep -o '"transport":"[a-z]*","hex":"[0-9a-fA-F]*"' "$shared/protocol/vectors.jsonl" |
            sed 's/"transport":"\([a-z]*\)","hex":"\([0-9a-fA-F]*\)"/\1\tvector\t\2/'
    } | awk -F'\t' 'length($3) % 2 == 0 && $3 ~ /^[0-9a-fA-F]+$/' | sort -u > "$work/seed-hex.tsv"

    handshake=000f333536333037303432343431303133 # IMEI 356307042441013
    n=0
    while IFS=$'\t' read -r transport kind hex; do
        n=$((n + 1))
        printf -v name '%s/seeds/seed-%04d' "$work" "$n"
        # Control byte ff: small limit 519 bytes, byte-at-a-time scanning, every decode cut.
        printf 'ff%s' "$hex" | unhex > "$name"
        # 3f: the same limit, scanning as a receiver does (jump to the length asked for).
        printf '3f%s' "$hex" | unhex > "$name-j"
        if [ "$transport" = tcp ] && [ "$kind" != handshake ] && [ "$kind" != ping ]; then
            printf '7f%s%s' "$handshake" "$hex" | unhex > "$name-s" # a session: handshake first
        fi
    done < "$work/seed-hex.tsv"
    echo "run_fuzz: $n seed packets, $(ls "$work/seeds" | wc -l) seed files in $work/seeds"

    # Tokens the codec branches on.
    cat > "$work/codec.dict" << 'EOF'
preamble="\x00\x00\x00\x00"
imei_len="\x00\x0f"
ping="\xff"
codec8="\x08"
codec8e="\x8e"
codec16="\x10"
codec12="\x0c"
codec13="\x0d"
codec14="\x0e"
codec15="\x0f"
udp_head="\xca\xfe\x01"
type_cmd="\x05"
type_resp="\x06"
type_fwd="\x0b"
type_nack="\x11"
crc_hi="\x00\x00"
EOF
}

case $target in
    fuzz_codec)
        codec_seeds
        dict=$work/codec.dict max_len=8192 ;;
    fuzz_http | fuzz_config | fuzz_proxyhdr)
        seeds=$here/seeds/${target#fuzz_}
        ls "$seeds"/* > /dev/null 2>&1 || die "no seeds in $seeds"
        cp "$seeds"/* "$work/seeds/"
        echo "run_fuzz: $(ls "$work/seeds" | wc -l) seed files from $seeds"
        # A request head stops at 4096 bytes, a config line at 4094: room to cross either.
        dict=$here/$target.dict max_len=16384 ;;
    *) die "unknown fuzz target '$target' (fuzz_codec, fuzz_http, fuzz_config or fuzz_proxyhdr)" ;;
esac

log="$work/fuzz.log"
set +e
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" \
    -print_final_stats=1 -dict="$dict" -artifact_prefix="$work/" "$@" \
    "$work/corpus" "$work/seeds" > "$log" 2>&1
rc=$?
set -e

stats='number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb'
grep -E "^(INFO: seed corpus|#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|stat::($stats))" \
    "$log" || true
if [ $rc -ne 0 ]; then
    echo "run_fuzz: libFuzzer exited with $rc; the end of $log:" >&2
    tail -n 60 "$log" >&2
    ls -l "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2> /dev/null >&2 || true
    exit $rc
fi
echo "run_fuzz: ok, corpus $(ls "$work/corpus" | wc -l) inputs in $work/corpus"
