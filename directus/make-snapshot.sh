#!/usr/bin/env bash
# make-snapshot.sh — writes schema/directus/snapshot.yaml: what Directus owns of the business
# tables (collections, fields, relations, their interfaces and displays), taken from a
# throwaway PostgreSQL + Redis + Directus (11.3.5, the pinned one) where the gateway's SQL
# made the tables and adopt.mjs gave them their metadata. Run it after changing adopt.mjs or
# schema/postgres's public tables, or the pinned Directus; commit the snapshot with the change.
# A snapshot is only ever applied by the version that wrote it (directus/README.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
. "$top/tests/lib/throwaway.sh"
tw_tmpdir directus-snapshot
tmp=$TW_TMP
tw_pg_start "$tmp/pg"
tw_redis_start "$tmp/redis"
# The SQL and bootstrap only: no snapshot is applied (an empty one would drop the tables).
AVLGATE_DIRECTUS_SNAPSHOT=none "$here/dstack.sh" setup "$tmp/d" "$TW_PG" "$TW_REDIS"
tw_defer "$(printf '%q stop %q' "$here/dstack.sh" "$tmp/d")"
AVLGATE_DIRECTUS_ACCESS=none "$here/dstack.sh" start "$tmp/d"
node "$here/adopt.mjs" "$tmp/d"
"$here/dstack.sh" cli "$tmp/d" schema snapshot --yes "$tmp/snapshot.yaml" >/dev/null
mv "$tmp/snapshot.yaml" "$top/schema/directus/snapshot.yaml"
echo "make-snapshot: wrote schema/directus/snapshot.yaml" >&2
