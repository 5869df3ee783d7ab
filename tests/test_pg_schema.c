/* test_pg_schema.c — the PostgreSQL schema against a real server (the ctest fixture "pg"):
 * apply and re-apply, the start-up check and its messages, daily partitions (made, idempotent,
 * rows moved out of the default partition, never blocking an open COPY, retention), the COPY
 * BINARY rows of copyenc loaded and read back column by column, and the device_state
 * functions: the upserts' update rules, 007's owner token (device_state_claim takes a device
 * over or not, device_state_upsert_owned's fence refuses a moved device's batch whole, a
 * takeover waits for the batch holding the row), also through pipeline mode.
 *
 * Each test has a database of its own (tests/support/pgtest.h). Single-threaded test code;
 * allocates freely. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/pgschema.h"
#include "loadgen/packetgen.h"
#include "tests/support/pgtest.h"
#include "tests/support/testutil.h"

enum {
    SCHEMA_FILES = 7,
    ARENA_BYTES = 24 << 20,
    RECORDS_MAX = 60000,
    COPY_CHUNK_BYTES = 64 * 1024,
    IMEI_BASE = 350000000000000,
};

#define MS_PER_DAY INT64_C(86400000)

static struct pktgen_packet pkt;
static struct avl_record dec[AVL_RECORDS_MAX];

/* ---- helpers ------------------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "YYYYMMDD" of the UTC day that is days after today. */
static void utc_day(int days, char out[9])
{
    time_t t = (time_t)(now_ms() / 1000 + (int64_t)days * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 9, "%Y%m%d", &tm);
}

/* Start of today (UTC) in ms since 1970. */
static int64_t today_ms(void)
{
    return now_ms() / MS_PER_DAY * MS_PER_DAY;
}

/* COPY header + rows of recs[0 .. n-1] (imei IMEI_BASE + first + i) + trailer through a plain
 * blocking COPY; the caller owns the transaction. Returns the rows copied. */
static long copy_rows(PGconn *conn, enum copyenc_layout layout, const struct avl_record *recs,
                      size_t n, uint64_t imei_first, int64_t received_us)
{
    size_t cap = COPYENC_HEADER_BYTES + COPYENC_TRAILER_BYTES;
    for (size_t i = 0; i < n; i++)
        cap += copyenc_row_bytes_max(layout, &recs[i]);
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    size_t len = (size_t)copyenc_header(buf);
    for (size_t i = 0; i < n; i++) {
        int w = copyenc_row(layout, buf + len, cap - len, imei_first + i, &recs[i],
                            received_us + (int64_t)i);
        if (w < 0)
            fail_msg("copyenc_row %zu: %s", i, copyenc_strerror(w));
        len += (size_t)w;
    }
    len += (size_t)copyenc_trailer(buf + len);

    PGresult *r = PQexec(conn, copyenc_copy_sql(layout));
    if (PQresultStatus(r) != PGRES_COPY_IN)
        fail_msg("COPY: %s", PQresultErrorMessage(r));
    PQclear(r);
    for (size_t off = 0; off < len; off += COPY_CHUNK_BYTES) {
        size_t chunk = len - off < COPY_CHUNK_BYTES ? len - off : COPY_CHUNK_BYTES;
        assert_int_equal(PQputCopyData(conn, (const char *)buf + off, (int)chunk), 1);
    }
    assert_int_equal(PQputCopyEnd(conn, NULL), 1);
    r = PQgetResult(conn);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        fail_msg("COPY end: %s", PQresultErrorMessage(r));
    long rows = atol(PQcmdTuples(r));
    PQclear(r);
    while ((r = PQgetResult(conn)) != NULL)
        PQclear(r);
    free(buf);
    return rows;
}

/* One hand-made record (no IO) at ts_ms, decoded from a frame in frame_out (keep it). */
static struct avl_record plain_record(uint64_t ts_ms, uint8_t frame_out[128])
{
    struct avl_record_src s;
    memset(&s, 0, sizeof s);
    s.rec.ts_ms = ts_ms;
    s.rec.lon_e7 = 254871163;
    s.rec.lat_e7 = 547071033;
    s.rec.generation = AVL_GENERATION_NONE;
    int n = avl_encode_tcp(frame_out, 128, AVL_CODEC_8, &s, 1);
    assert_true(n > 0);
    struct avl_packet p;
    struct avl_record out[AVL_RECORDS_MAX];
    assert_int_equal(avl_decode_tcp(frame_out, (size_t)n, &p, out), 0);
    return out[0];
}

/* The text of io as jsonb prints it: duplicate keys keep the last value, keys sorted by
 * length and then bytes, ", " and ": " between. */
struct kv {
    char key[8];
    size_t key_len;
    char *val;
};

static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

static char *jsonb_text(const struct avl_record *r)
{
    struct kv *kvs = calloc(r->io_total + 1u, sizeof *kvs);
    assert_non_null(kvs);
    size_t n = 0, text_cap = 16;
    struct avl_io_iter it;
    struct avl_io io;
    avl_io_iter_init(&it, r);
    while (avl_io_next(&it, &io)) {
        char key[8];
        int key_len = snprintf(key, sizeof key, "%u", io.id);
        size_t k;
        for (k = 0; k < n; k++)
            if (kvs[k].key_len == (size_t)key_len && memcmp(kvs[k].key, key, (size_t)key_len) == 0)
                break;
        if (k == n) {
            memcpy(kvs[n].key, key, sizeof key);
            kvs[n].key_len = (size_t)key_len;
            n++;
        } else {
            free(kvs[k].val); /* a repeated id: the last one wins */
        }
        char *v = malloc(2u * io.len + 32);
        assert_non_null(v);
        if (io.nx) {
            v[0] = '"';
            tu_hex_encode(io.bytes, io.len, v + 1);
            strcat(v, "\"");
        } else {
            snprintf(v, 32, "%" PRIu64, io.value);
        }
        kvs[k].val = v;
    }
    qsort(kvs, n, sizeof *kvs, kv_cmp);
    for (size_t k = 0; k < n; k++)
        text_cap += kvs[k].key_len + strlen(kvs[k].val) + 6;
    char *text = malloc(text_cap);
    assert_non_null(text);
    size_t len = 0;
    text[len++] = '{';
    for (size_t k = 0; k < n; k++) {
        len += (size_t)snprintf(text + len, text_cap - len, "%s\"%s\": %s", k ? ", " : "",
                                kvs[k].key, kvs[k].val);
        free(kvs[k].val);
    }
    text[len++] = '}';
    text[len] = '\0';
    free(kvs);
    return text;
}

/* ---- apply and check ---------------------------------------------------------------------- */

static void test_apply_and_check(void **state)
{
    (void)state;
    struct pgtest_db db;
    char err[4096];
    pgtest_db_create(&db, "apply", false);

    /* an empty database: everything is missing, each said once */
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_contains(err, "telemetry.positions: missing table");
    assert_contains(err, "public.device_state: missing table");
    assert_contains(err, "public.devices: missing table");
    assert_contains(err, "function telemetry.device_state_upsert_owned(bigint[], bigint[], "
                         "bigint[], integer[], integer[], bytea[], text, integer, bigint[]): "
                         "missing");
    assert_contains(err, "function telemetry.device_state_claim(bigint, bigint, boolean): missing");
    assert_contains(err, "function telemetry.ensure_partitions(integer, integer): missing");
    assert_null(strstr(err, "telemetry.positions.imei"));
    /* 004's device_state_upsert and device_state_get stay for compatibility; the gateway does
     * not call them, so the check does not ask for them */
    assert_null(strstr(err, "device_state_upsert("));
    assert_null(strstr(err, "device_state_get"));

    /* apply, re-apply: the same files, no error, nothing changes */
    assert_int_equal(pgschema_apply(db.conn, pgtest_schema_dir(), err, sizeof err), SCHEMA_FILES);
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
    assert_string_equal(err, "");
    char before[64];
    pgtest_scalar(db.conn,
                  "SELECT count(*) || '/' || (SELECT count(*) FROM pg_proc WHERE pronamespace = "
                  "'telemetry'::regnamespace) FROM pg_class WHERE relnamespace IN "
                  "('telemetry'::regnamespace, 'public'::regnamespace)",
                  before, sizeof before);
    assert_int_equal(pgschema_apply(db.conn, pgtest_schema_dir(), err, sizeof err), SCHEMA_FILES);
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
    char after[64];
    pgtest_scalar(db.conn,
                  "SELECT count(*) || '/' || (SELECT count(*) FROM pg_proc WHERE pronamespace = "
                  "'telemetry'::regnamespace) FROM pg_class WHERE relnamespace IN "
                  "('telemetry'::regnamespace, 'public'::regnamespace)",
                  after, sizeof after);
    assert_string_equal(before, after);
    /* apply left the connection idle and the caller's message level as it was */
    assert_int_equal(PQtransactionStatus(db.conn), PQTRANS_IDLE);
    char level[32];
    assert_string_equal(pgtest_scalar(db.conn, "SHOW client_min_messages", level, sizeof level),
                        "warning");

    /* with psql, as the README says, twice */
    char cmd[2048];
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd,
                 "for f in %s/*.sql; do psql -X -q -v ON_ERROR_STOP=1 \"%s\" -f \"$f\" "
                 ">/dev/null 2>&1 || exit 1; done",
                 pgtest_schema_dir(), db.conninfo);
        assert_int_equal(system(cmd), 0);
    }
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);

    /* the table has exactly these columns, in this order */
    char cols[1024];
    pgtest_scalar(db.conn,
                  "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || "
                  "CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum) "
                  "FROM pg_attribute WHERE attrelid = 'telemetry.positions'::regclass "
                  "AND attnum > 0 AND NOT attisdropped",
                  cols, sizeof cols);
    assert_string_equal(cols, "imei bigint not null, ts timestamp with time zone not null, "
                              "received_at timestamp with time zone not null, priority smallint, "
                              "lon double precision, lat double precision, altitude smallint, "
                              "angle smallint, satellites smallint, speed smallint, "
                              "event_id integer, io jsonb, generation smallint, codec smallint, "
                              "io_ids integer[], io_vals bigint[], nx_ids integer[], "
                              "nx_vals bytea[]");
    /* device_state: 007's owner last, nullable and without a default (a catalog-only ADD) */
    pgtest_scalar(db.conn,
                  "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || "
                  "CASE WHEN attnotnull THEN ' not null' ELSE '' END || CASE WHEN atthasdef "
                  "THEN ' default' ELSE '' END, ', ' ORDER BY attnum) FROM pg_attribute "
                  "WHERE attrelid = 'public.device_state'::regclass AND attnum > 0 AND NOT "
                  "attisdropped",
                  cols, sizeof cols);
    assert_string_equal(cols, "imei bigint not null, last_ts timestamp with time zone, "
                              "last_lon double precision, last_lat double precision, "
                              "last_received_at timestamp with time zone, instance text, "
                              "shard integer, dedup bytea, updated_at timestamp with time zone "
                              "default, owner bigint");
    char idx[256];
    pgtest_scalar(db.conn,
                  "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                  "WHERE indrelid = 'telemetry.positions'::regclass",
                  idx, sizeof idx);
    assert_string_equal(idx, "CREATE INDEX positions_imei_ts_idx ON ONLY telemetry.positions "
                             "USING btree (imei, ts)");

    /* a bad file: the error names the file and the server's message; nothing stays open */
    char dir[] = "/tmp/avlgate_schema_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/001_bad.sql", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("BEGIN;\nCREATE TABLE public.ok_so_far (a int);\nSELECT no_such_function();\nCOMMIT;\n",
          f);
    fclose(f);
    assert_int_equal(pgschema_apply(db.conn, dir, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_contains(err, "001_bad.sql: ERROR:  function no_such_function() does not exist");
    assert_int_equal(PQtransactionStatus(db.conn), PQTRANS_IDLE);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM pg_class WHERE relname = "
                                               "'ok_so_far'"),
                     0);
    unlink(path);
    assert_int_equal(pgschema_apply(db.conn, dir, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_contains(err, "no .sql files");
    rmdir(dir);
    assert_int_equal(pgschema_apply(db.conn, "/nonexistent/schema", err, sizeof err),
                     PGSCHEMA_E_FAIL);
    assert_contains(err, "/nonexistent/schema: No such file or directory");

    pgtest_db_drop(&db);
}

/* Each change the gateway would trip over is named precisely; undoing it clears it. */
static void test_check_messages(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *break_sql;
        const char *want;
        const char *fix_sql;
    } cases[] = {
        {"io json",
         "DROP VIEW telemetry.positions_io; "
         "ALTER TABLE telemetry.positions ALTER COLUMN io TYPE json",
         "telemetry.positions.io: expected jsonb, found json",
         "ALTER TABLE telemetry.positions ALTER COLUMN io TYPE jsonb USING io::jsonb"},
        {"speed int",
         "DROP VIEW telemetry.positions_io; "
         "ALTER TABLE telemetry.positions ALTER COLUMN speed TYPE integer",
         "telemetry.positions.speed: expected smallint, found integer",
         "ALTER TABLE telemetry.positions ALTER COLUMN speed TYPE smallint"},
        {"ts without tz", "ALTER TABLE public.device_state ALTER COLUMN last_ts TYPE timestamp",
         "public.device_state.last_ts: expected timestamp with time zone, found timestamp "
         "without time zone",
         "ALTER TABLE public.device_state ALTER COLUMN last_ts TYPE timestamptz"},
        {"dropped column", "ALTER TABLE public.device_state DROP COLUMN dedup",
         "public.device_state.dedup: missing column (expected bytea)",
         "ALTER TABLE public.device_state ADD COLUMN dedup bytea"},
        {"dropped positions column",
         "DROP VIEW telemetry.positions_io; "
         "ALTER TABLE telemetry.positions DROP COLUMN generation",
         "telemetry.positions.generation: missing column (expected smallint)",
         "ALTER TABLE telemetry.positions ADD COLUMN generation smallint"},
        {"extra not null",
         "ALTER TABLE telemetry.positions ADD COLUMN tenant integer NOT NULL DEFAULT 0; "
         "ALTER TABLE telemetry.positions ALTER COLUMN tenant DROP DEFAULT",
         "telemetry.positions.tenant: NOT NULL without a default, and the gateway does not "
         "write it",
         "ALTER TABLE telemetry.positions DROP COLUMN tenant"},
        {"no default partition",
         "ALTER TABLE telemetry.positions DETACH PARTITION telemetry.positions_default",
         "telemetry.positions: no DEFAULT partition",
         "ALTER TABLE telemetry.positions ATTACH PARTITION telemetry.positions_default DEFAULT"},
        {"no key", "ALTER TABLE public.device_state DROP CONSTRAINT device_state_pkey",
         "public.device_state: no unique index on (imei)",
         "ALTER TABLE public.device_state ADD PRIMARY KEY (imei)"},
        {"dropped owner", "ALTER TABLE public.device_state DROP COLUMN owner",
         "public.device_state.owner: missing column (expected bigint)", NULL},
        {"owner int", "ALTER TABLE public.device_state ALTER COLUMN owner TYPE integer",
         "public.device_state.owner: expected bigint, found integer",
         "ALTER TABLE public.device_state ALTER COLUMN owner TYPE bigint"},
        {"missing function", "DROP FUNCTION telemetry.device_state_claim(bigint, bigint, boolean)",
         "function telemetry.device_state_claim(bigint, bigint, boolean): missing", NULL},
        {"claim's old result",
         "DROP FUNCTION telemetry.device_state_claim(bigint, bigint, boolean); CREATE FUNCTION "
         "telemetry.device_state_claim(p_imei bigint, p_owner bigint, p_known_only boolean) "
         "RETURNS TABLE (last_ts_ms bigint, dedup bytea, enabled boolean) LANGUAGE sql AS "
         "'SELECT NULL::bigint, NULL::bytea, NULL::boolean'",
         "function telemetry.device_state_claim(bigint, bigint, boolean): expected to return "
         "TABLE(last_ts_ms bigint, dedup bytea, enabled boolean, owner bigint, claimed boolean), "
         "found TABLE(last_ts_ms bigint, dedup bytea, enabled boolean)",
         "DROP FUNCTION telemetry.device_state_claim(bigint, bigint, boolean)"},
        {"other result",
         "DROP FUNCTION telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], "
         "integer[], integer[], bytea[], text, integer, bigint[]); CREATE FUNCTION "
         "telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], integer[], integer[], "
         "bytea[], text, integer, bigint[]) RETURNS void LANGUAGE sql AS ''",
         "function telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], integer[], "
         "integer[], bytea[], text, integer, bigint[]): expected to return integer, found void",
         "DROP FUNCTION telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], "
         "integer[], integer[], bytea[], text, integer, bigint[])"},
        {"owners integer[]",
         "DROP FUNCTION telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], "
         "integer[], integer[], bytea[], text, integer, bigint[]); CREATE FUNCTION "
         "telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], integer[], integer[], "
         "bytea[], text, integer, integer[]) RETURNS integer LANGUAGE sql AS 'SELECT 0'",
         "function telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], integer[], "
         "integer[], bytea[], text, integer, bigint[]): missing",
         "DROP FUNCTION telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], "
         "integer[], integer[], bytea[], text, integer, integer[])"},
        {"plain table",
         "ALTER TABLE telemetry.positions RENAME TO positions_old; CREATE TABLE "
         "telemetry.positions (LIKE telemetry.positions_old)",
         "telemetry.positions: expected a partitioned table",
         "DROP TABLE telemetry.positions; ALTER TABLE telemetry.positions_old RENAME TO "
         "positions"},
    };
    struct pgtest_db db;
    char err[4096];
    pgtest_db_create(&db, "check", true);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
        pgtest_exec(db.conn, cases[i].break_sql);
        int rc = pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err);
        if (rc != PGSCHEMA_E_FAIL || !tu_contains(err, cases[i].want))
            fail_msg("%s: rc %d, err '%s', want '%s'", cases[i].name, rc, err, cases[i].want);
        /* only that problem */
        if (strstr(err, "; "))
            fail_msg("%s: more than one problem: '%s'", cases[i].name, err);
        if (cases[i].fix_sql)
            pgtest_exec(db.conn, cases[i].fix_sql);
        /* re-applying the schema restores what a fix statement does not */
        int applied = pgschema_apply(db.conn, pgtest_schema_dir(), err, sizeof err);
        if (applied != SCHEMA_FILES)
            fail_msg("%s: re-apply: %s", cases[i].name, err);
        if (pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err) != 0)
            fail_msg("%s: still failing after the fix: %s", cases[i].name, err);
    }

    /* 004's functions, which the gateway no longer calls, are not asked for */
    pgtest_exec(db.conn, "DROP FUNCTION telemetry.device_state_get(bigint); DROP FUNCTION "
                         "telemetry.device_state_upsert(bigint[], bigint[], bigint[], integer[], "
                         "integer[], bytea[], text, integer)");
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_int_equal(pgschema_apply(db.conn, pgtest_schema_dir(), err, sizeof err), SCHEMA_FILES);

    /* several problems are all listed */
    pgtest_exec(db.conn, "DROP VIEW telemetry.positions_io; "
                         "ALTER TABLE telemetry.positions ALTER COLUMN io TYPE json; "
                         "ALTER TABLE public.devices DROP COLUMN enabled");
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_string_equal(err, "telemetry.positions.io: expected jsonb, found json; "
                             "public.devices.enabled: missing column (expected boolean)");
    /* a small buffer is cut, never overrun */
    char small[24];
    memset(small, 'x', sizeof small);
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, small, 20), PGSCHEMA_E_FAIL);
    assert_int_equal(strlen(small), 19);
    assert_int_equal(small[20], 'x');
    pgtest_db_drop(&db);
}

/* ---- partitions --------------------------------------------------------------------------- */

static void test_partitions(void **state)
{
    (void)state;
    struct pgtest_db db;
    char err[1024], sql[1024], v[256];
    pgtest_db_create(&db, "parts", true);

    /* rows that arrive before their partitions exist go to the default partition */
    static uint8_t frames[6][128];
    int64_t t0 = today_ms();
    struct avl_record rs[6] = {
        plain_record((uint64_t)(t0 + 9 * MS_PER_DAY), frames[0]),
        plain_record((uint64_t)(t0 + 9 * MS_PER_DAY + 43200000), frames[1]),
        plain_record((uint64_t)(t0 + 10 * MS_PER_DAY - 1), frames[2]),
        plain_record((uint64_t)(t0 + 10 * MS_PER_DAY), frames[3]), /* day 10: stays */
        plain_record((uint64_t)(t0 + 3 * MS_PER_DAY), frames[4]),
        plain_record(0, frames[5]), /* before the first fix: default for ever */
    };
    pgtest_exec(db.conn, "BEGIN");
    assert_int_equal(copy_rows(db.conn, COPYENC_JSONB, rs, 6, IMEI_BASE, now_ms() * 1000), 6);
    pgtest_exec(db.conn, "COMMIT");
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions_default"),
                     6);

    /* today .. today + 7: 8 partitions, then none */
    assert_int_equal(pgschema_ensure_partitions(db.conn, 7, err, sizeof err), 8);
    assert_int_equal(pgschema_ensure_partitions(db.conn, 7, err, sizeof err), 0);
    char d0[9], d3[9], d7[9], d9[9];
    utc_day(0, d0);
    utc_day(3, d3);
    utc_day(7, d7);
    utc_day(9, d9);
    pgtest_scalar(db.conn,
                  "SELECT count(*) || ' ' || min(c.relname) || ' ' || max(c.relname) FROM "
                  "pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = "
                  "'telemetry.positions'::regclass AND c.relname <> 'positions_default'",
                  v, sizeof v);
    char want[128];
    snprintf(want, sizeof want, "8 positions_%s positions_%s", d0, d7);
    assert_string_equal(v, want);
    /* bounds are UTC days; each partition has the (imei, ts) index and no leftover CHECK */
    snprintf(sql, sizeof sql,
             "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.oid = "
             "'telemetry.positions_%s'::regclass",
             d3);
    snprintf(want, sizeof want, "FOR VALUES FROM ('%.4s-%.2s-%.2s 00:00:00+00') TO (", d3, d3 + 4,
             d3 + 6);
    pgtest_exec(db.conn, "SET TimeZone = 'UTC'");
    pgtest_scalar(db.conn, sql, v, sizeof v);
    assert_contains(v, want);
    snprintf(sql, sizeof sql,
             "SELECT (SELECT count(*) FROM pg_index WHERE indrelid = "
             "'telemetry.positions_%s'::regclass) || '/' || (SELECT count(*) FROM pg_constraint "
             "WHERE conrelid = 'telemetry.positions_%s'::regclass AND contype = 'c')",
             d3, d3);
    assert_string_equal(pgtest_scalar(db.conn, sql, v, sizeof v), "1/0");
    /* the row of day 3 moved out of the default partition into its own */
    snprintf(sql, sizeof sql, "SELECT count(*) FROM telemetry.positions_%s", d3);
    assert_int_equal(pgtest_scalar_ll(db.conn, sql), 1);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions_default"),
                     5);

    /* two more days: the three rows of day 9 move, the first ms of day 10 stays */
    assert_int_equal(pgschema_ensure_partitions(db.conn, 9, err, sizeof err), 2);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM telemetry.positions_%s", d9);
    assert_int_equal(pgtest_scalar_ll(db.conn, sql), 3);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions_default"),
                     2);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions"), 6);
    /* the SQL function itself: (created, missing, detail) */
    PGresult *r = PQexec(db.conn, "SELECT * FROM telemetry.ensure_partitions(10)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    assert_string_equal(PQgetvalue(r, 0, 1), "0");
    assert_true(PQgetisnull(r, 0, 2));
    PQclear(r);

    /* arguments */
    r = PQexec(db.conn, "SELECT * FROM telemetry.ensure_partitions(-1)");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_contains(PQresultErrorMessage(r), "days_ahead must be 0..366");
    PQclear(r);
    assert_int_equal(pgschema_ensure_partitions(db.conn, 400, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_contains(err, "days_ahead must be 0..366, not 400");

    /* retention: an old day is dropped whole; old rows leave the default partition only when
     * they were also received long ago */
    pgtest_exec(db.conn, "CREATE TABLE telemetry.positions_20200101 PARTITION OF "
                         "telemetry.positions FOR VALUES FROM ('2020-01-01 00:00:00+00') TO "
                         "('2020-01-02 00:00:00+00')");
    pgtest_exec(db.conn, "INSERT INTO telemetry.positions (imei, ts, received_at) VALUES "
                         "(1, '2020-01-01 12:00+00', '2020-01-01 12:00:05+00'), "
                         "(2, '1970-01-01 00:00+00', '2020-01-01 12:00:05+00')");
    pgtest_scalar(db.conn,
                  "SELECT string_agg(p::text, ',') FROM telemetry.expired_partitions(30) AS p", v,
                  sizeof v);
    assert_string_equal(v, "telemetry.positions_20200101");
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT telemetry.drop_partitions(30)"), 1);
    assert_int_equal(
        pgtest_scalar_ll(db.conn,
                         "SELECT count(*) FROM pg_class WHERE relname = 'positions_20200101'"),
        0);
    /* left: the recently received 1970 row; gone: the 1970 row received in 2020 */
    pgtest_scalar(
        db.conn,
        "SELECT string_agg(imei::text, ',' ORDER BY imei) FROM telemetry.positions_default", v,
        sizeof v);
    snprintf(want, sizeof want, "%" PRIu64, (uint64_t)IMEI_BASE + 5);
    assert_string_equal(v, want);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT telemetry.drop_partitions(30)"), 0);
    /* today's partitions are never expired with keep_days 0 */
    assert_int_equal(
        pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.expired_partitions(0)"), 0);
    pgtest_db_drop(&db);
}

static char notices[8192];

static void on_notice(void *arg, const char *message)
{
    (void)arg;
    strncat(notices, message, sizeof notices - strlen(notices) - 1);
}

/* While a gateway's COPY transaction is open (rows in, COMMIT not yet sent), re-applying the
 * schema and making partitions go through without waiting; only a COPY that wrote into the
 * default partition makes ensure_partitions give up after its lock timeout. The plain
 * CREATE TABLE ... PARTITION OF is shown to wait, which is why the function exists. */
static void test_partitions_do_not_block_copy(void **state)
{
    (void)state;
    struct pgtest_db db;
    char err[1024], v[256];
    pgtest_db_create(&db, "noblock", true);
    assert_int_equal(pgschema_ensure_partitions(db.conn, 7, err, sizeof err), 8);
    PQsetNoticeProcessor(db.conn, on_notice, NULL);

    PGconn *gw = pgtest_connect(&db);
    static uint8_t frames[2][128];
    struct avl_record today = plain_record((uint64_t)now_ms(), frames[0]);
    struct avl_record prefix = plain_record(0, frames[1]);
    pgtest_exec(gw, "BEGIN");
    assert_int_equal(copy_rows(gw, COPYENC_JSONB, &today, 1, IMEI_BASE, now_ms() * 1000), 1);
    /* the premise: the open transaction holds COPY's lock on the parent */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(mode, ',') FROM pg_locks WHERE pid = %d AND relation = "
             "'telemetry.positions'::regclass",
             PQbackendPID(gw));
    assert_string_equal(pgtest_scalar(db.conn, sql, v, sizeof v), "RowExclusiveLock");

    pgtest_exec(db.conn, "SET lock_timeout = '300ms'");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(pgschema_apply(db.conn, pgtest_schema_dir(), err, sizeof err), SCHEMA_FILES);
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
    assert_int_equal(pgschema_ensure_partitions(db.conn, 9, err, sizeof err), 2);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double waited_ms = (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
    print_message("apply + check + 2 partitions beside an open COPY: %.0f ms\n", waited_ms);

    /* ATTACH proved the new partition's bound from its CHECK, without a scan */
    pgtest_exec(db.conn, "SET client_min_messages = debug1");
    notices[0] = '\0';
    assert_int_equal(pgschema_ensure_partitions(db.conn, 10, err, sizeof err), 1);
    pgtest_exec(db.conn, "SET client_min_messages = warning");
    char d10[9], want[128];
    utc_day(10, d10);
    snprintf(want, sizeof want,
             "partition constraint for table \"positions_%s\" is implied by "
             "existing constraints",
             d10);
    assert_contains(notices, want);

    /* the plain way waits for the COPY transaction */
    PGresult *r = PQexec(db.conn, "CREATE TABLE telemetry.positions_x PARTITION OF "
                                  "telemetry.positions FOR VALUES FROM ('2001-01-01') TO "
                                  "('2001-01-02')");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_contains(PQresultErrorMessage(r), "lock timeout");
    PQclear(r);

    /* now the open COPY also wrote into the default partition: ATTACH needs that one */
    assert_int_equal(copy_rows(gw, COPYENC_JSONB, &prefix, 1, IMEI_BASE + 1, now_ms() * 1000), 1);
    notices[0] = '\0';
    assert_int_equal(pgschema_ensure_partitions(db.conn, 12, err, sizeof err), PGSCHEMA_E_AGAIN);
    assert_contains(err, "made 0, 2 day(s) still without a partition");
    assert_contains(err, "lock timeout");
    assert_contains(notices, "WARNING:  telemetry.ensure_partitions:");
    /* the caller's lock_timeout is back after the function's own */
    assert_string_equal(pgtest_scalar(db.conn, "SHOW lock_timeout", v, sizeof v), "300ms");

    /* another session making partitions: this one does not wait, and says so */
    PGconn *other = pgtest_connect(&db);
    pgtest_exec(other, "BEGIN; SELECT pg_advisory_xact_lock(1635151975, 2)");
    assert_int_equal(pgschema_ensure_partitions(db.conn, 12, err, sizeof err), PGSCHEMA_E_AGAIN);
    assert_contains(err, "another session holds the partition lock");
    pgtest_exec(other, "ROLLBACK");
    PQfinish(other);

    pgtest_exec(gw, "COMMIT");
    assert_int_equal(pgschema_ensure_partitions(db.conn, 12, err, sizeof err), 2);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions"), 2);
    PQfinish(gw);
    pgtest_db_drop(&db);
}

/* ---- COPY round trip ---------------------------------------------------------------------- */

/* Records from packetgen (realistic and arbitrary, every codec, plus today's timestamps so
 * some land in daily partitions), COPYed with copyenc and read back: every column equals its
 * source. imei is IMEI_BASE + the record's index, so ORDER BY imei pairs rows and records. */
static void test_copy_roundtrip(void **state)
{
    (void)state;
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    struct pgtest_db db;
    char err[1024];
    pgtest_db_create(&db, "copy", true);
    assert_int_equal(pgschema_ensure_partitions(db.conn, 7, err, sizeof err), 8);

    uint8_t *arena = malloc(ARENA_BYTES);
    struct avl_record *recs = calloc(RECORDS_MAX, sizeof *recs);
    assert_non_null(arena);
    assert_non_null(recs);
    size_t arena_len = 0, recs_len = 0, nulled = 0, nx = 0, gen_null = 0;
    int64_t t0 = today_ms();
    for (int mode = 0; mode < 2; mode++) {
        for (int c = 0; c < 3; c++) {
            struct pktgen g;
            pktgen_init(&g, 0x5EED0000u + (uint64_t)(mode * 3 + c));
            for (int i = 0; i < (mode ? 60 : 300); i++) {
                uint32_t cap = mode ? 8192 : 4096;
                assert_true(arena_len + cap <= ARENA_BYTES);
                int n = pktgen_packet_tcp(&g, (enum pktgen_mode)mode, codecs[c],
                                          PKTGEN_RECORDS_RANDOM, &pkt, arena + arena_len, cap);
                assert_true(n > 0);
                struct avl_packet p;
                assert_int_equal(avl_decode_tcp(arena + arena_len, (size_t)n, &p, dec), 0);
                arena_len += (size_t)n;
                for (unsigned k = 0; k < p.records_len && recs_len < RECORDS_MAX; k++) {
                    struct avl_record r = dec[k];
                    nulled += copyenc_nulls(&r) != 0; /* stored with NULL there */
                    if (recs_len % 7 == 0)            /* today .. today + 7: the daily partitions */
                        r.ts_ms = (uint64_t)(t0 + (int64_t)(recs_len % 8) * MS_PER_DAY +
                                             (int64_t)(recs_len % 86400000));
                    struct avl_io_iter it;
                    struct avl_io io;
                    avl_io_iter_init(&it, &r);
                    while (avl_io_next(&it, &io))
                        nx += io.nx;
                    gen_null += r.codec != AVL_CODEC_16;
                    recs[recs_len++] = r;
                }
            }
        }
    }
    assert_true(recs_len > 3000);
    assert_true(nx > 100);

    const int64_t rx0 = INT64_C(1700000000123456);
    pgtest_exec(db.conn, "BEGIN");
    assert_int_equal(copy_rows(db.conn, COPYENC_JSONB, recs, recs_len, IMEI_BASE, rx0),
                     (long)recs_len);
    pgtest_exec(db.conn, "COMMIT");

    PGresult *r = pgtest_query(
        db.conn, "SELECT imei, floor(extract(epoch FROM ts) * 1000)::bigint, "
                 "(extract(epoch FROM received_at) * 1000000)::bigint, priority, lon, lat, "
                 "altitude, angle, satellites, speed, event_id, io::text, generation, codec "
                 "FROM telemetry.positions ORDER BY imei");
    assert_int_equal(PQntuples(r), (int)recs_len);
    for (int i = 0; i < PQntuples(r); i++) {
        const struct avl_record *e = &recs[i];
        char want[64];
#define COL_EQ(col, fmt, value)                                                                    \
    do {                                                                                           \
        snprintf(want, sizeof want, fmt, value);                                                   \
        if (PQgetisnull(r, i, col) || strcmp(PQgetvalue(r, i, col), want) != 0)                    \
            fail_msg("row %d column %d: got '%s', want '%s'", i, col, PQgetvalue(r, i, col),       \
                     want);                                                                        \
    } while (0)
        COL_EQ(0, "%" PRIu64, (uint64_t)IMEI_BASE + (uint64_t)i);
        COL_EQ(1, "%" PRIu64, e->ts_ms);
        COL_EQ(2, "%" PRId64, rx0 + i);
        COL_EQ(3, "%u", e->priority);
        COL_EQ(6, "%d", e->altitude_m);
        if (e->angle_deg > 32767)
            assert_true(PQgetisnull(r, i, 7));
        else
            COL_EQ(7, "%u", e->angle_deg);
        COL_EQ(8, "%u", e->satellites);
        if (e->speed_kmh > 32767)
            assert_true(PQgetisnull(r, i, 9));
        else
            COL_EQ(9, "%u", e->speed_kmh);
        COL_EQ(10, "%u", e->event_id);
        COL_EQ(13, "%u", e->codec);
#undef COL_EQ
        /* float8 prints the shortest text that reads back as the same double */
        double lon = strtod(PQgetvalue(r, i, 4), NULL), lat = strtod(PQgetvalue(r, i, 5), NULL);
        if (lon != (double)e->lon_e7 / 1e7 || lat != (double)e->lat_e7 / 1e7)
            fail_msg("row %d: lon/lat %s %s, want %d %d e-7", i, PQgetvalue(r, i, 4),
                     PQgetvalue(r, i, 5), e->lon_e7, e->lat_e7);
        if (e->codec == AVL_CODEC_16) {
            char g[8];
            snprintf(g, sizeof g, "%u", e->generation);
            assert_false(PQgetisnull(r, i, 12));
            assert_string_equal(PQgetvalue(r, i, 12), g);
        } else {
            assert_true(PQgetisnull(r, i, 12));
        }
        char *io = jsonb_text(e);
        if (strcmp(PQgetvalue(r, i, 11), io) != 0)
            fail_msg("row %d io:\n got  %s\n want %s", i, PQgetvalue(r, i, 11), io);
        free(io);
    }
    PQclear(r);
    long in_daily =
        pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions WHERE "
                                  "tableoid <> 'telemetry.positions_default'::regclass");
    long generation_nulls = pgtest_scalar_ll(
        db.conn, "SELECT count(*) FROM telemetry.positions WHERE generation IS NULL");
    assert_int_equal(generation_nulls, (long)gen_null);
    assert_true(in_daily >= (long)recs_len / 7 - 1);
    long angle_speed_nulls = pgtest_scalar_ll(
        db.conn, "SELECT count(*) FROM telemetry.positions WHERE angle IS NULL OR speed IS NULL");
    assert_int_equal(angle_speed_nulls, (long)nulled);
    assert_true(nulled > 0); /* the arbitrary mode reaches angles and speeds above 32767 */
    print_message("COPY round trip: %zu rows (%ld in daily partitions, %zu NX elements), %zu "
                  "with an angle or speed stored NULL\n",
                  recs_len, in_daily, nx, nulled);

    free(arena);
    free(recs);
    pgtest_db_drop(&db);
}

/* ---- device_state ------------------------------------------------------------------------- */

/* 004's device_state_upsert with owners NULL, else 007's device_state_upsert_owned with those
 * owner tokens; want_rows is what it returns. */
static void upsert(PGconn *c, const char *owners, const char *imeis, const char *ts, const char *rx,
                   const char *lon, const char *lat, const char *dedup, const char *instance,
                   int shard, long want_rows)
{
    char sql[1024], tail[256] = "";
    if (owners)
        snprintf(tail, sizeof tail, ", ARRAY[%s]::bigint[]", owners);
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert%s(ARRAY[%s]::bigint[], ARRAY[%s]::bigint[], "
             "ARRAY[%s]::bigint[], ARRAY[%s]::integer[], ARRAY[%s]::integer[], "
             "ARRAY[%s]::bytea[], '%s', %d%s)",
             owners ? "_owned" : "", imeis, ts, rx, lon, lat, dedup, instance, shard, tail);
    assert_int_equal(pgtest_scalar_ll(c, sql), want_rows);
}

static const char *state_of(PGconn *c, long long imei, char *out, size_t cap)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT telemetry.timestamptz_to_ms(last_ts) || ' ' || last_lon || ' ' || last_lat "
             "|| ' ' || telemetry.timestamptz_to_ms(last_received_at) || ' ' || "
             "COALESCE(encode(dedup, 'hex'), 'null') || ' ' || instance || ' ' || shard "
             "FROM public.device_state WHERE imei = %lld",
             imei);
    return pgtest_scalar(c, sql, out, cap);
}

/* The same records COPYed in the arrays layout (the default) and in the jsonb one, under IMEIs
 * ARRAYS_IMEI_OFFSET apart: every column but the IO ones is equal in each pair, the arrays
 * row has io NULL and the jsonb row NULL arrays, the arrays hold io_total elements, and
 * telemetry.io_jsonb of the arrays is the jsonb row's io (wire order kept, NX as hex). */
static void test_copy_arrays(void **state)
{
    (void)state;
    enum { ARRAYS_IMEI_OFFSET = 1000000 };
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    static struct avl_record recs[3000];
    static uint8_t arena[3 * 400][4096];
    struct pgtest_db db;
    char err[1024];
    pgtest_db_create(&db, "copyarr", true);
    assert_int_equal(pgschema_check(db.conn, COPYENC_ARRAYS, err, sizeof err), 0);
    size_t recs_len = 0;
    long io_total = 0;
    struct pktgen g;
    pktgen_init(&g, 0xA77A);
    for (int i = 0; i < 3 * 400 && recs_len + AVL_RECORDS_MAX <= 3000; i++) {
        int n = pktgen_packet_tcp(&g, (enum pktgen_mode)(i % 2), codecs[i % 3],
                                  PKTGEN_RECORDS_RANDOM, &pkt, arena[i], sizeof arena[i]);
        assert_true(n > 0);
        struct avl_packet p;
        assert_int_equal(avl_decode_tcp(arena[i], (size_t)n, &p, dec), 0);
        for (unsigned k = 0; k < p.records_len && recs_len < 3000; k++) {
            recs[recs_len++] = dec[k];
            io_total += dec[k].io_total;
        }
    }
    assert_true(recs_len > 1000);
    const int64_t rx = INT64_C(1700000000123456);
    pgtest_exec(db.conn, "BEGIN");
    assert_int_equal(copy_rows(db.conn, COPYENC_JSONB, recs, recs_len, IMEI_BASE, rx),
                     (long)recs_len);
    assert_int_equal(
        copy_rows(db.conn, COPYENC_ARRAYS, recs, recs_len, IMEI_BASE + ARRAYS_IMEI_OFFSET, rx),
        (long)recs_len);
    pgtest_exec(db.conn, "COMMIT");
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM telemetry.positions a JOIN telemetry.positions j"
             " ON a.imei = j.imei + %d AND a.received_at = j.received_at"
             " WHERE a.io IS NULL AND j.io_ids IS NULL AND j.io_vals IS NULL"
             "   AND j.nx_ids IS NULL AND j.nx_vals IS NULL"
             "   AND (a.ts, a.priority, a.lon, a.lat, a.altitude, a.satellites, a.event_id,"
             "        a.codec) = (j.ts, j.priority, j.lon, j.lat, j.altitude, j.satellites,"
             "        j.event_id, j.codec)"
             "   AND a.angle IS NOT DISTINCT FROM j.angle AND a.speed IS NOT DISTINCT FROM j.speed"
             "   AND a.generation IS NOT DISTINCT FROM j.generation"
             "   AND telemetry.io_jsonb(a.io_ids, a.io_vals, a.nx_ids, a.nx_vals) = j.io",
             ARRAYS_IMEI_OFFSET);
    assert_int_equal(pgtest_scalar_ll(db.conn, sql), (long)recs_len);
    long elems =
        pgtest_scalar_ll(db.conn, "SELECT sum(coalesce(array_length(io_ids, 1), 0) + "
                                  "coalesce(array_length(nx_ids, 1), 0)) FROM telemetry.positions "
                                  "WHERE io IS NULL AND cardinality(io_ids) = cardinality(io_vals) "
                                  "AND cardinality(nx_ids) = cardinality(nx_vals)");
    assert_int_equal(elems, io_total);
    print_message("arrays layout: %zu rows, %ld IO elements, equal to the jsonb layout's\n",
                  recs_len, io_total);
    pgtest_db_drop(&db);
}

/* The update rules of the state upsert, one device and several: through 004's
 * device_state_upsert (owners NULL), or through device_state_upsert_owned with owners that
 * match the rows' (one device: owner1; three: owner3). */
static void upsert_sequence(PGconn *c, const char *owner1, const char *owner3)
{
    char v[512];
    upsert(c, owner1, "1", "1000", "5000", "10", "20", "'\\x01'", "a", 1, 1);
    assert_string_equal(state_of(c, 1, v, sizeof v), "1000 1e-06 2e-06 5000 01 a 1");
    /* an older record (newest-first device): ts and position stay, dedup and owner change */
    upsert(c, owner1, "1", "500", "6000", "30", "40", "'\\x02'", "b", 2, 1);
    assert_string_equal(state_of(c, 1, v, sizeof v), "1000 1e-06 2e-06 5000 02 b 2");
    /* newer: everything follows */
    upsert(c, owner1, "1", "2000", "7000", "-1234567890", "895000001", "'\\x0304'", "b", 2, 1);
    assert_string_equal(state_of(c, 1, v, sizeof v), "2000 -123.456789 89.5000001 7000 0304 b 2");
    /* equal ts: the new position; NULL dedup keeps the old */
    upsert(c, owner1, "1", "2000", "8000", "50", "60", "NULL", "c", 3, 1);
    assert_string_equal(state_of(c, 1, v, sizeof v), "2000 5e-06 6e-06 8000 0304 c 3");
    /* several devices at once; ms precision and old/far timestamps exact */
    upsert(c, owner3, "3, 2, 1", "1560161086123, 0, 9224318015999999", "1, 2, 3", "1, 2, 3",
           "4, 5, 6", "'\\xaa', '\\xbb', '\\x'", "d", 4, 3);
    /* an empty dedup is a value, not NULL: it replaces */
    assert_string_equal(state_of(c, 1, v, sizeof v), "9224318015999999 3e-07 6e-07 3  d 4");
    assert_string_equal(state_of(c, 2, v, sizeof v), "0 2e-07 5e-07 2 bb d 4");
    assert_string_equal(state_of(c, 3, v, sizeof v), "1560161086123 1e-07 4e-07 1 aa d 4");
    char ts[64];
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT to_char(last_ts AT TIME ZONE 'UTC', "
                                      "'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM public.device_state "
                                      "WHERE imei = 3",
                                      ts, sizeof ts),
                        "2019-06-10T10:04:46.123");
    /* a repeated imei in one call is the caller's bug, and PostgreSQL says so */
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert%s(ARRAY[7, 7], ARRAY[1, 2], ARRAY[1, 2], "
             "ARRAY[1, 2], ARRAY[1, 2], ARRAY[NULL, NULL]::bytea[], 'x', 0%s)",
             owner1 ? "_owned" : "", owner1 ? ", ARRAY[5, 5]" : "");
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_contains(PQresultErrorMessage(r), "cannot affect row a second time");
    PQclear(r);
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM public.device_state WHERE imei = 7"),
                     0);
}

static void test_device_state(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[512];
    pgtest_db_create(&db, "state", true);
    PGconn *c = db.conn;

    upsert_sequence(c, NULL, NULL);
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT string_agg(imei || ':' || COALESCE(owner::text, "
                                      "'-'), ' ' ORDER BY imei) FROM public.device_state",
                                      v, sizeof v),
                        "1:- 2:- 3:-");
    /* the same rules through the gateway's device_state_upsert_owned; the owners stay */
    pgtest_exec(c, "TRUNCATE public.device_state");
    upsert_sequence(c, "77", "88, 88, 77");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT string_agg(imei || ':' || COALESCE(owner::text, "
                                      "'-'), ' ' ORDER BY imei) FROM public.device_state",
                                      v, sizeof v),
                        "1:77 2:88 3:88");

    /* device_state_get: one row always; enabled from devices, NULL when unknown there */
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT last_ts_ms || ' ' || encode(dedup, 'hex') || ' ' || "
                                      "COALESCE(enabled::text, 'null') FROM "
                                      "telemetry.device_state_get(2)",
                                      v, sizeof v),
                        "0 bb null");
    pgtest_exec(c, "INSERT INTO public.devices (imei, name, enabled) VALUES (2, 'van 2', false), "
                   "(99, 'new', true)");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT last_ts_ms || ' ' || encode(dedup, 'hex') || ' ' || "
                                      "enabled FROM telemetry.device_state_get(2)",
                                      v, sizeof v),
                        "0 bb false");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT row(last_ts_ms, dedup, enabled)::text FROM "
                                      "telemetry.device_state_get(99)",
                                      v, sizeof v),
                        "(,,t)");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT row(last_ts_ms, dedup, enabled)::text FROM "
                                      "telemetry.device_state_get(12345)",
                                      v, sizeof v),
                        "(,,)");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT string_agg(imei || ':' || COALESCE(last_ts_ms::text, "
                                      "'-') || ':' || COALESCE(enabled::text, '-'), ' ') FROM "
                                      "telemetry.device_state_get_many(ARRAY[99, 3, 2, 3, NULL])",
                                      v, sizeof v),
                        "2:0:false 3:1560161086123:- 99:-:true");
    /* the devices table has the Directus audit columns with their defaults */
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT (date_created IS NOT NULL) || ' ' || (date_updated "
                                      "IS NULL) || ' ' || (user_created IS NULL) FROM "
                                      "public.devices WHERE imei = 2",
                                      v, sizeof v),
                        "true true true");
    pgtest_db_drop(&db);
}

/* ---- device_state_claim and device_state_upsert_owned (007) ------------------------------- */

/* One answer of telemetry.device_state_claim. */
struct claim_res {
    char state[128]; /* "last_ts_ms dedup-hex enabled", "-" for NULL */
    long long owner; /* -1: NULL */
    bool claimed;
};

static struct claim_res claim(PGconn *c, long long imei, long long owner, bool known_only)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT COALESCE(last_ts_ms::text, '-') || ' ' || COALESCE(encode(dedup, 'hex'), "
             "'-') || ' ' || COALESCE(enabled::text, '-'), owner, claimed FROM "
             "telemetry.device_state_claim(%lld, %lld, %s)",
             imei, owner, known_only ? "true" : "false");
    PGresult *r = pgtest_query(c, sql);
    assert_int_equal(PQntuples(r), 1); /* one row always */
    struct claim_res res;
    snprintf(res.state, sizeof res.state, "%s", PQgetvalue(r, 0, 0));
    res.owner = PQgetisnull(r, 0, 1) ? -1 : strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    assert_false(PQgetisnull(r, 0, 2));
    res.claimed = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
    PQclear(r);
    return res;
}

/* The newest token telemetry.device_owner_seq gave, 0 before the first. */
static long long seq_last(PGconn *c)
{
    return pgtest_scalar_ll(c, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "
                               "telemetry.device_owner_seq");
}

/* "xmin owner" of the device's row ("" when it has none): a write changes the xmin. */
static const char *row_version(PGconn *c, long long imei, char *out, size_t cap)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT COALESCE((SELECT xmin || ' ' || COALESCE(owner::text, '-') FROM "
             "public.device_state WHERE imei = %lld), '')",
             imei);
    return pgtest_scalar(c, sql, out, cap);
}

/* A claim that takes the device over: a fresh token (the sequence's newest, above every
 * earlier one), written to the row, and the state as it was. */
static long long expect_taken(PGconn *c, long long imei, long long owner, bool known_only,
                              const char *state, long long above)
{
    char sql[256];
    struct claim_res r = claim(c, imei, owner, known_only);
    assert_string_equal(r.state, state);
    assert_true(r.claimed);
    assert_int_equal(r.owner, seq_last(c));
    assert_true(r.owner > above && r.owner != owner);
    snprintf(sql, sizeof sql, "SELECT owner FROM public.device_state WHERE imei = %lld", imei);
    assert_int_equal(pgtest_scalar_ll(c, sql), r.owner);
    return r.owner;
}

/* A claim that takes nothing: the state, the row's owner (-1: no row) and claimed=false; the
 * row (or its absence) and the sequence untouched. */
static void expect_kept(PGconn *c, long long imei, long long owner, bool known_only,
                        const char *state, long long row_owner)
{
    char before[64], after[64];
    row_version(c, imei, before, sizeof before);
    long long seq = seq_last(c);
    struct claim_res r = claim(c, imei, owner, known_only);
    assert_string_equal(r.state, state);
    assert_false(r.claimed);
    assert_int_equal(r.owner, row_owner);
    assert_string_equal(row_version(c, imei, after, sizeof after), before);
    assert_int_equal(seq_last(c), seq);
}

/* device_state_claim: a new device gets a row and a fresh token; the holder of the row's token
 * claims nothing and writes nothing; any other token (or 0) takes the device over; with
 * p_known_only a device absent or disabled in public.devices is neither claimed nor given a
 * row. */
static void test_device_state_claim(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[64];
    pgtest_db_create(&db, "claim", true);
    PGconn *c = db.conn;
    assert_int_equal(seq_last(c), 0);

    long long t1 = expect_taken(c, 10, 0, false, "- - -", 0);
    assert_string_equal(state_of(c, 10, v, sizeof v), ""); /* a row, no state yet */
    expect_kept(c, 10, t1, false, "- - -", t1);
    /* the state the holder's batches wrote; still nothing claimed or written */
    char owner[32];
    snprintf(owner, sizeof owner, "%lld", t1);
    upsert(c, owner, "10", "1000", "5000", "10", "20", "'\\x0102'", "a", 1, 1);
    expect_kept(c, 10, t1, false, "1000 0102 -", t1);
    /* another token, and 0 (a shard that holds none): taken over, the state kept */
    long long t2 = expect_taken(c, 10, 424242, false, "1000 0102 -", t1);
    long long t3 = expect_taken(c, 10, 0, false, "1000 0102 -", t2);
    expect_kept(c, 10, t3, false, "1000 0102 -", t3);
    /* a row from before 007 (no owner): taken by a token, even by 0 */
    upsert(c, NULL, "11", "2000", "6000", "1", "2", "'\\x11'", "b", 2, 1);
    long long t4 = expect_taken(c, 11, 0, false, "2000 11 -", t3);

    /* known only: absent from public.devices, disabled, enabled */
    pgtest_exec(c, "INSERT INTO public.devices (imei, name, enabled) VALUES (10, 'off', false), "
                   "(21, 'off', false), (22, 'on', true)");
    expect_kept(c, 20, 0, true, "- - -", -1);           /* absent, no row: none made */
    expect_kept(c, 21, 0, true, "- - false", -1);       /* disabled, no row: none made */
    expect_kept(c, 10, 0, true, "1000 0102 false", t3); /* disabled: its row stays as it is */
    expect_kept(c, 11, 0, true, "2000 11 -", t4);       /* absent, with a row */
    long long t5 = expect_taken(c, 22, 0, true, "- - true", t4);
    expect_kept(c, 22, t5, true, "- - true", t5);
    /* not known only (a reload of an open device): claimed whatever devices says */
    long long t6 = expect_taken(c, 21, 0, false, "- - false", t5);
    expect_taken(c, 10, t6, false, "1000 0102 false", t6);
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM public.device_state"), 4);
    assert_int_equal(
        pgtest_scalar_ll(c, "SELECT count(*) FROM public.device_state WHERE imei = 20"), 0);
    pgtest_db_drop(&db);
}

/* SQLSTATE, message and hint of a statement expected to fail. */
static void expect_moved(PGconn *c, const char *sql, long long imei)
{
    char want[128];
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_FATAL_ERROR)
        fail_msg("%s: %s, want 23AV0", sql, PQresStatus(PQresultStatus(r)));
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "23AV0");
    snprintf(want, sizeof want, "device %lld is owned by another connection now (it moved)", imei);
    assert_string_equal(PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY), want);
    assert_contains(PQresultErrorField(r, PG_DIAG_MESSAGE_HINT), "avlgate refuses this packet");
    PQclear(r);
}

/* "imei:xmin:owner ..." of every device_state row: any write shows. */
static const char *state_rows(PGconn *c, char *out, size_t cap)
{
    return pgtest_scalar(c,
                         "SELECT COALESCE(string_agg(imei || ':' || xmin || ':' || "
                         "COALESCE(owner::text, '-'), ' ' ORDER BY imei), '') FROM "
                         "public.device_state",
                         out, cap);
}

/* device_state_upsert_owned: rows are written when every owner matches; when one device's row
 * has another owner, SQLSTATE 23AV0 names it (the lowest such imei) and nothing of the
 * transaction is stored, the batch's COPY included; a device without a row gets one with the
 * token given. */
static void test_device_state_upsert_owned(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[512], before[512], sql[1024], owners[64];
    pgtest_db_create(&db, "owned", true);
    PGconn *c = db.conn;
    long long t30 = claim(c, 30, 0, false).owner, t31 = claim(c, 31, 0, false).owner;
    assert_true(t30 > 0 && t31 > t30);

    snprintf(owners, sizeof owners, "%lld, %lld", t31, t30);
    upsert(c, owners, "31, 30", "2000, 1000", "6000, 5000", "3, 1", "4, 2", "'\\x31', '\\x30'",
           "gw", 2, 2);
    assert_string_equal(state_of(c, 30, v, sizeof v), "1000 1e-07 2e-07 5000 30 gw 2");
    assert_string_equal(state_of(c, 31, v, sizeof v), "2000 3e-07 4e-07 6000 31 gw 2");
    snprintf(sql, sizeof sql,
             "SELECT %lld = (SELECT owner FROM public.device_state WHERE imei = "
             "30) AND %lld = (SELECT owner FROM public.device_state WHERE "
             "imei = 31)",
             t30, t31);
    assert_string_equal(pgtest_scalar(c, sql, v, sizeof v), "t");

    /* device 31 moved (another token): the batch's transaction stores nothing */
    state_rows(c, before, sizeof before);
    static uint8_t frame[128];
    struct avl_record rec = plain_record((uint64_t)now_ms(), frame);
    pgtest_exec(c, "BEGIN");
    assert_int_equal(copy_rows(c, COPYENC_ARRAYS, &rec, 1, 30, now_ms() * 1000), 1);
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert_owned(ARRAY[30, 31], ARRAY[3000, 3000], "
             "ARRAY[7000, 7000], ARRAY[5, 5], ARRAY[6, 6], ARRAY['\\x32', '\\x33']::bytea[], "
             "'gw', 2, ARRAY[%lld, %lld])",
             t30, t31 + 1000);
    expect_moved(c, sql, 31);
    PGresult *r = PQexec(c, "COMMIT");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    assert_string_equal(PQcmdStatus(r), "ROLLBACK");
    PQclear(r);
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM telemetry.positions"), 0);
    assert_string_equal(state_rows(c, v, sizeof v), before);
    assert_string_equal(state_of(c, 30, v, sizeof v), "1000 1e-07 2e-07 5000 30 gw 2");

    /* both moved: the lowest imei is named; taken over by a claim: the old token is refused */
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert_owned(ARRAY[31, 30], ARRAY[3000, 3000], "
             "ARRAY[7000, 7000], ARRAY[5, 5], ARRAY[6, 6], ARRAY[NULL, NULL]::bytea[], 'gw', 2, "
             "ARRAY[0, 0])");
    expect_moved(c, sql, 30);
    assert_string_equal(state_rows(c, v, sizeof v), before);
    long long t30b = claim(c, 30, 0, false).owner;
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert_owned(ARRAY[30], ARRAY[3000], ARRAY[7000], "
             "ARRAY[5], ARRAY[6], ARRAY[NULL]::bytea[], 'gw', 2, ARRAY[%lld])",
             t30);
    state_rows(c, before, sizeof before);
    expect_moved(c, sql, 30);
    assert_string_equal(state_rows(c, v, sizeof v), before);
    snprintf(owners, sizeof owners, "%lld", t30b);
    upsert(c, owners, "30", "3000", "7000", "5", "6", "NULL", "gw2", 1, 1);
    assert_string_equal(state_of(c, 30, v, sizeof v), "3000 5e-07 6e-07 7000 30 gw2 1");

    /* a device without a row gets one with the given token, which it then holds */
    upsert(c, "555", "32", "4000", "8000", "7", "8", "'\\x'", "gw", 2, 1);
    assert_string_equal(state_of(c, 32, v, sizeof v), "4000 7e-07 8e-07 8000  gw 2");
    expect_kept(c, 32, 555, false, "4000  -", 555);
    pgtest_db_drop(&db);
}

/* Both statements lock the device's row: a claim that takes the device over waits for the
 * batch that holds the row and then reads that batch's window; a claim by the batch's own
 * token does not wait and reads the committed state (what the gateway's stale-load handling
 * is for); the batch after the takeover fails its fence. */
static void test_claim_waits_for_batch(void **state)
{
    (void)state;
    struct pgtest_db db;
    char sql[1024], owners[32], v[64];
    pgtest_db_create(&db, "claimwait", true);
    PGconn *a = db.conn, *b = pgtest_connect(&db), *watch = pgtest_connect(&db);
    pgtest_exec(b, "SET statement_timeout = '10s'");
    long long t1 = claim(a, 40, 0, false).owner;
    snprintf(owners, sizeof owners, "%lld", t1);
    upsert(a, owners, "40", "1000", "5000", "1", "2", "'\\x01'", "gw-a", 1, 1);

    pgtest_exec(a, "BEGIN");
    upsert(a, owners, "40", "2000", "6000", "3", "4", "'\\x02'", "gw-a", 1, 1);
    expect_kept(b, 40, t1, false, "1000 01 -", t1);

    snprintf(sql, sizeof sql,
             "SELECT last_ts_ms || ' ' || encode(dedup, 'hex') || ' ' || owner || ' ' || claimed "
             "FROM telemetry.device_state_claim(40, 0, false)");
    assert_int_equal(PQsendQuery(b, sql), 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event_type = 'Lock'",
             PQbackendPID(b));
    uint64_t t0 = tu_now_ms();
    while (pgtest_scalar_ll(watch, sql) == 0) {
        if (tu_now_ms() - t0 > 10000)
            fail_msg("the takeover claim did not wait for the batch's row lock");
        usleep(10000);
    }
    pgtest_exec(a, "COMMIT");
    PGresult *r = PQgetResult(b);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    long long t2 = seq_last(watch);
    assert_true(t2 > t1);
    snprintf(sql, sizeof sql, "2000 02 %lld true", t2);
    assert_string_equal(PQgetvalue(r, 0, 0), sql);
    PQclear(r);
    assert_null(PQgetResult(b));

    /* the old holder's next batch */
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert_owned(ARRAY[40], ARRAY[3000], ARRAY[7000], "
             "ARRAY[5], ARRAY[6], ARRAY[NULL]::bytea[], 'gw-a', 1, ARRAY[%lld])",
             t1);
    expect_moved(a, sql, 40);
    assert_string_equal(state_of(a, 40, v, sizeof v), "2000 3e-07 4e-07 6000 02 gw-a 1");
    PQfinish(watch);
    PQfinish(b);
    pgtest_db_drop(&db);
}

/* public.commands (005): defaults, the status and payload checks, the partial index of open
 * commands per IMEI, and the Directus audit columns. */
static void test_commands_table(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[512];
    pgtest_db_create(&db, "commands", true);
    PGconn *c = db.conn;
    pgtest_exec(c, "INSERT INTO public.commands (imei, payload) VALUES (356307042441013, "
                   "'getinfo'), (356307042441013, 'setdigout 1'), (1, 'getver')");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT string_agg(id || ':' || status || ':' || attempts "
                                      "|| ':' || response_hex || ':' || (date_created IS NOT "
                                      "NULL) || ':' || (expires_at IS NULL), ' ' ORDER BY id) "
                                      "FROM public.commands",
                                      v, sizeof v),
                        "1:pending:0:false:true:true 2:pending:0:false:true:true "
                        "3:pending:0:false:true:true");
    static const char *const bad[] = {
        "INSERT INTO public.commands (imei, payload, status) VALUES (1, 'x', 'queued')",
        "INSERT INTO public.commands (imei, payload) VALUES (1, '')",
        "INSERT INTO public.commands (imei, payload) VALUES (NULL, 'x')",
        "INSERT INTO public.commands (imei, payload, attempts) VALUES (1, 'x', -1)",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        PGresult *r = PQexec(c, bad[i]);
        assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
        PQclear(r);
    }
    /* the open-commands index serves "open commands of this IMEI, oldest first" */
    pgtest_exec(c, "UPDATE public.commands SET status = 'answered', response = 'ok' WHERE id = 1");
    pgtest_exec(c, "SET enable_seqscan = off");
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT string_agg(id::text, ' ' ORDER BY id) FROM "
                                      "public.commands WHERE imei = 356307042441013 AND status "
                                      "IN ('pending', 'sent')",
                                      v, sizeof v),
                        "2");
    PGresult *r = PQexec(c, "EXPLAIN SELECT id FROM public.commands WHERE imei = 1 AND status "
                            "IN ('pending', 'sent') ORDER BY id");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    bool uses_index = false;
    for (int i = 0; i < PQntuples(r); i++)
        uses_index |= strstr(PQgetvalue(r, i, 0), "commands_open_by_imei") != NULL;
    PQclear(r);
    assert_true(uses_index);
    pgtest_db_drop(&db);
}

/* The gateway's batch: COPY, then the state upsert (under the owner token its state load
 * claimed) and a look-up in pipeline mode (one round trip), then COMMIT; rows and state become
 * visible together. */
static void test_batch_transaction_pipeline(void **state)
{
    (void)state;
    struct pgtest_db db;
    char err[256], v[256];
    pgtest_db_create(&db, "batch", true);
    assert_int_equal(pgschema_ensure_partitions(db.conn, 7, err, sizeof err), 8);
    PGconn *c = db.conn;
    PGconn *reader = pgtest_connect(&db);
    long long token = claim(c, 42, 0, false).owner;
    assert_true(token > 0);

    static uint8_t frames[3][128];
    int64_t t = now_ms();
    struct avl_record rs[3] = {
        plain_record((uint64_t)t, frames[0]),
        plain_record((uint64_t)t - 1000, frames[1]),
        plain_record((uint64_t)t - 2000, frames[2]),
    };
    pgtest_exec(c, "BEGIN");
    assert_int_equal(copy_rows(c, COPYENC_JSONB, rs, 3, 42, t * 1000), 3);

    assert_int_equal(PQenterPipelineMode(c), 1);
    const char *upsert_sql = "SELECT telemetry.device_state_upsert_owned($1, $2, $3, $4, $5, $6, "
                             "$7, $8, $9)";
    char ts_arr[64], rx_arr[64], owner_arr[32], owner[24];
    snprintf(ts_arr, sizeof ts_arr, "{%" PRId64 "}", t);
    snprintf(rx_arr, sizeof rx_arr, "{%" PRId64 "}", t + 5);
    snprintf(owner_arr, sizeof owner_arr, "{%lld}", token);
    snprintf(owner, sizeof owner, "%lld", token);
    const char *params[9] = {"{42}",        ts_arr,        rx_arr,
                             "{254871163}", "{547071033}", "{\"\\\\x0102\"}",
                             "inst-1",      "2",           owner_arr};
    assert_int_equal(PQsendQueryParams(c, upsert_sql, 9, NULL, params, NULL, NULL, 0), 1);
    const char *get_params[2] = {"42", owner};
    assert_int_equal(PQsendQueryParams(c,
                                       "SELECT last_ts_ms, encode(dedup, 'hex'), owner, claimed "
                                       "FROM telemetry.device_state_claim($1, $2, false)",
                                       2, NULL, get_params, NULL, NULL, 0),
                     1);
    assert_int_equal(PQpipelineSync(c), 1);
    PGresult *r = PQgetResult(c);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    assert_null(PQgetResult(c));
    r = PQgetResult(c);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    char want_ts[32];
    snprintf(want_ts, sizeof want_ts, "%" PRId64, t);
    assert_string_equal(PQgetvalue(r, 0, 0), want_ts);
    assert_string_equal(PQgetvalue(r, 0, 1), "0102");
    assert_string_equal(PQgetvalue(r, 0, 2), owner); /* its own token: nothing claimed */
    assert_string_equal(PQgetvalue(r, 0, 3), "f");
    PQclear(r);
    assert_null(PQgetResult(c));
    r = PQgetResult(c);
    assert_int_equal(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    assert_int_equal(PQexitPipelineMode(c), 1);

    /* not visible before COMMIT (the row is the claim's, without state), both visible after */
    assert_int_equal(pgtest_scalar_ll(reader, "SELECT count(*) FROM telemetry.positions"), 0);
    assert_int_equal(pgtest_scalar_ll(reader, "SELECT count(*) FROM public.device_state WHERE "
                                              "last_ts IS NOT NULL OR dedup IS NOT NULL"),
                     0);
    pgtest_exec(c, "COMMIT");
    assert_int_equal(pgtest_scalar_ll(reader, "SELECT count(*) FROM telemetry.positions"), 3);
    char want[128];
    snprintf(want, sizeof want, "inst-1 2 54.7071033 %lld", token);
    assert_string_equal(pgtest_scalar(reader,
                                      "SELECT instance || ' ' || shard || ' ' || last_lat || ' ' "
                                      "|| owner FROM public.device_state WHERE imei = 42",
                                      v, sizeof v),
                        want);
    PQfinish(reader);
    pgtest_db_drop(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apply_and_check),
        cmocka_unit_test(test_check_messages),
        cmocka_unit_test(test_partitions),
        cmocka_unit_test(test_partitions_do_not_block_copy),
        cmocka_unit_test(test_copy_roundtrip),
        cmocka_unit_test(test_copy_arrays),
        cmocka_unit_test(test_device_state),
        cmocka_unit_test(test_device_state_claim),
        cmocka_unit_test(test_device_state_upsert_owned),
        cmocka_unit_test(test_claim_waits_for_batch),
        cmocka_unit_test(test_batch_transaction_pipeline),
        cmocka_unit_test(test_commands_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
