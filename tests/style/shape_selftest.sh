#!/usr/bin/env bash
# shape_selftest.sh — shape_check.sh must say no when it should: a tree with a 71-line function
# and one with shard/ including gateway/ fail, naming the place; the same trees mended (70
# lines, no upward include) pass.
#
#   shape_selftest.sh CTAGS SHAPE_CHECK
set -euo pipefail
ctags=$1 check=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A tree of 24 small files (the check refuses to run on a near-empty tree), plus f.c.
tree() {
  rm -rf "$tmp/t"
  mkdir -p "$tmp/t"/{codec,shard,gateway,loadgen,bench}
  for i in $(seq 1 24); do printf 'int g%d(void)\n{\n    return %d;\n}\n' "$i" "$i" >"$tmp/t/gateway/g$i.c"; done
}
# f.c with a function of $1 lines in all (signature to closing brace).
func_of() {
  { echo "int f(int x)"; echo "{"; for _ in $(seq 1 $(($1 - 4))); do echo "    x++;"; done
    echo "    return x;"; echo "}"; } >"$tmp/t/$2"
}
expect() { # expect RC PATTERN
  local rc=0 out
  out=$("$check" "$ctags" "$tmp/t" 2>&1) || rc=$?
  if [ "$rc" != "$1" ] || ! grep -q -- "$2" <<<"$out"; then
    echo "shape_selftest: expected exit $1 and '$2', got exit $rc:"; echo "$out"; exit 1
  fi
}

tree; func_of 71 shard/f.c
expect 1 "shard/f.c:1: f is 71 lines (max 70)"
tree; func_of 70 loadgen/f.c
expect 0 "every function within 70 lines"
tree; func_of 71 bench/f.c
expect 1 "bench/f.c:1: f is 71 lines"
tree; func_of 10 codec/f.c; sed -i '1i #include "gateway/x.h"' "$tmp/t/codec/f.c"
expect 1 'codec/f.c:1:#include "gateway/x.h"'
tree; func_of 10 shard/f.h; sed -i '1i #  include <gateway/x.h>' "$tmp/t/shard/f.h"
expect 1 "must not include gateway/"
tree; func_of 10 gateway/f.c; sed -i '1i #include "shard/engine.h"' "$tmp/t/gateway/f.c"
expect 0 "no layer included upwards"
echo "shape_selftest: 6 cases as expected"
