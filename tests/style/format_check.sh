#!/usr/bin/env bash
# Fails when a tracked C/C++ source is not formatted as .clang-format says.
# usage: format_check.sh CLANG_FORMAT SOURCE_DIR
set -euo pipefail
cf=$1; src=$2
cd "$src"
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cc' 2>/dev/null || find codec gateway shard bench loadgen tests -name '*.[ch]' -o -name '*.cc')
[ ${#files[@]} -gt 0 ] || { echo "format_check: no sources found" >&2; exit 1; }
"$cf" --dry-run --Werror "${files[@]}"
echo "format_check: ${#files[@]} files formatted"
