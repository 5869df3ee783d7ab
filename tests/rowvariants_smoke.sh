#!/usr/bin/env bash
# rowvariants_smoke.sh — bench/rowvariants at the smallest sizes, on a throwaway PostgreSQL of
# its own: 1 round of 1 s per COPY ceiling, a query set of 10,000 rows of 200 devices, 1 timed
# run per query form. Asserts that the report has every variant with positive figures (COPY
# rows/s, bytes per row, the three query times) and the whole query set; that every q2 form of
# every variant counts the same rows (jsonb's arrow and contain, arrays' position, raw's
# accessor: the accessors read what jsonb holds), and more than none; that q3 gives the same
# rows in every variant and form, and q1 the same number of rows (raw's view the very rows of
# jsonb's); and that the cross-check found no row whose raw or arrays IO differs from jsonb's.
#
# usage: rowvariants_smoke.sh ROWVARIANTS BUILD_DIR
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: rowvariants_smoke.sh ROWVARIANTS BUILD_DIR" >&2; exit 2; }
script=$1 build=$2
. "$(dirname "$0")/lib/throwaway.sh"
tw_tmpdir rowvariants-smoke
out=$TW_TMP/out
fail() { echo "rowvariants_smoke: FAIL: $*" >&2; exit 1; }

variants="jsonb_btree jsonb_brin arrays_btree arrays_brin raw_btree raw_brin"
"$script" --build "$build" --out "$out" --variants "$variants" --seconds 1 --rounds 1 \
  --rows 10000 --devices 200 --runs 1 --label smoke
r=$out/report.json
[ -s "$r" ] || fail "no report.json"

for v in $variants; do
  jq -e --arg v "$v" '.variants[$v] | . != null and .rows == 10000 and .copy_rows_per_s > 0 and
      .bytes_per_row > 0 and .q1_ms > 0 and .q2_ms > 0 and .q3_ms > 0' "$r" >/dev/null ||
    fail "$v: $(jq -c --arg v "$v" '.variants[$v] | del(.q1_forms, .q2_forms, .q3_forms)' "$r")"
done

q2=$(jq -r '[.variants[].q2_forms[].result] | unique | join(" ")' "$r")
[[ $q2 =~ ^[1-9][0-9]*$ ]] || fail "q2 counts differ between forms or are 0: $q2"
q3=$(jq -r '[.variants[].q3_forms[].result] | unique | join(" | ")' "$r")
[[ $q3 =~ ^200\ [0-9a-f]{32}$ ]] || fail "q3 results differ or miss devices: $q3"
q1n=$(jq -r '[.variants[].q1_forms[].result | split(" ")[0]] | unique | join(" ")' "$r")
[[ $q1n =~ ^[1-9][0-9]*$ ]] || fail "q1 row counts differ or are 0: $q1n"
jq -e '.variants.jsonb_btree.q1_forms.plain.result == .variants.raw_btree.q1_forms.view.result' \
  "$r" >/dev/null || fail "raw's view does not give jsonb's rows for q1"

jq -e --arg vs "$variants" '
  ($vs | split(" ") | map(select(startswith("jsonb") | not))) as $others |
  [$others[] as $v | .check[$v] | . != null and .rows_compared > 0 and .io_mismatches == 0
                                  and .value_mismatches == 0] | all' "$r" >/dev/null ||
  fail "IO cross-check: $(jq -c .check "$r")"
echo "rowvariants_smoke: ok (q2 count $q2, q1 rows $q1n, check $(jq -c .check "$r"))"
