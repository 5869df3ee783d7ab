#!/usr/bin/env bash
# shape_check.sh — the layout rules the code keeps, checked on every `make test`:
#   - no function longer than MAX lines (default 70, its signature's first line to its closing
#     brace) in codec/, shard/, gateway/, loadgen/ and bench/*.c (tests may be longer);
#   - shard/ (the engine) and codec/ (the codec) never include gateway/ (the product).
# Functions are found with Universal Ctags (its end: field); a function it cannot measure is a
# failure too, not a pass.
#
#   shape_check.sh CTAGS SOURCE_DIR [MAX]
set -euo pipefail
ctags=$1 top=$2 max=${3:-70}
cd "$top"
"$ctags" --version 2>/dev/null | grep -q 'Universal Ctags' ||
  { echo "shape_check: $ctags is not Universal Ctags (apt-get install universal-ctags)" >&2; exit 2; }

mapfile -t files < <(find codec shard gateway loadgen -name '*.[ch]' | sort; find bench -maxdepth 1 -name '*.c' | sort)
[ ${#files[@]} -gt 20 ] || { echo "shape_check: found only ${#files[@]} sources under $top" >&2; exit 2; }

fail=0
long=$("$ctags" --langmap=C:.c.h --languages=C --kinds-C=f --fields=+ne -o - "${files[@]}" |
  awk -F'\t' -v max="$max" '
    { line = 0; end = 0
      for (i = 4; i <= NF; i++) {
        if ($i ~ /^line:/) line = substr($i, 6)
        if ($i ~ /^end:/) end = substr($i, 5)
      }
      if (!end) { printf "%s:%s: %s: no end found (cannot measure)\n", $2, line, $1; next }
      n = end - line + 1
      if (n > max) printf "%s:%s: %s is %d lines (max %d)\n", $2, line, $1, n, max }')
if [ -n "$long" ]; then
  echo "$long"
  echo "shape_check: $(printf '%s\n' "$long" | wc -l) function(s) over $max lines: split them" >&2
  fail=1
fi

layer=$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]gateway/' -r codec shard || true)
if [ -n "$layer" ]; then
  echo "$layer"
  echo "shape_check: shard/ and codec/ must not include gateway/" >&2
  fail=1
fi

[ "$fail" = 0 ] && echo "shape_check: ${#files[@]} files, every function within $max lines, no layer included upwards"
exit "$fail"
