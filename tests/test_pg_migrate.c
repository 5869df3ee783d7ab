/* test_pg_migrate.c — schema/postgres/006_io_arrays.sql against a real server (the ctest fixture
 * "pg"): the IO array columns on a fresh database and on one made by the 001 from before them
 * (tests/data/001_telemetry_v1.sql) holding jsonb rows; the view telemetry.positions_io over
 * both layouts; the reading and conversion functions at their edges; that the readers are
 * inlined and the view keeps the (imei, ts) index and partition pruning; the backfill;
 * re-applying without a lock stronger than ACCESS SHARE; and the one ACCESS EXCLUSIVE step
 * failing cleanly on its lock timeout, then succeeding. And 007_device_owner.sql re-applied
 * while gateway transactions hold device_state.
 *
 * Rows are written with plain SQL, not the COPY encoder. Each test has a database of its own
 * (tests/support/pgtest.h). Single-threaded test code; allocates freely. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/pgschema.h"
#include "tests/support/pgtest.h"
#include "tests/support/testutil.h"

enum {
    SCHEMA_FILES = 7,
    APPLY_MS_MAX = 1500,    /* a re-apply that waited for a lock would take >= 2000 */
    ADD_TIMEOUT_MS = 2000,  /* 006's lock_timeout for ADD COLUMN */
    FILE_TIMEOUT_MS = 5000, /* the files' lock_timeout */
};

#define V1_001_PATH AVLGATE_SOURCE_DIR "/tests/data/001_telemetry_v1.sql"
#define ARRAY_COLS  "io_ids integer[], io_vals bigint[], nx_ids integer[], nx_vals bytea[]"

/* Three rows as the jsonb layout stored them: a repeated id (jsonb keeps the last), a u64 of
 * 2^64 - 1, an NX value; no IO at all; 2^63 exactly (in the default partition: 2020). */
#define LEGACY_ROWS_SQL                                                                            \
    "INSERT INTO telemetry.positions (imei, ts, received_at, io, codec) VALUES "                   \
    "(1, now(), now(), '{\"239\":1,\"1\":5,\"240\":0,\"1\":7,\"16\":18446744073709551615,"         \
    "\"385\":\"0a0bff\"}', 142), "                                                                 \
    "(2, now(), now(), '{}', 8), "                                                                 \
    "(3, '2020-01-01 00:00+00', now(), '{\"66\":12000,\"78\":9223372036854775808,"                 \
    "\"241\":24602}', 8)"

/* What the view shows for them: io_ids io_vals nx_ids nx_vals, elements in id order. */
#define LEGACY_ARRAYS                                                                              \
    "1 {1,16,239,240} {7,-1,1,0} {385} {\"\\\\x0a0bff\"}; 2 {} {} {} {}; "                         \
    "3 {66,78,241} {12000,-9223372036854775808,24602} {} {}"

/* What the start-up check says of a database made before 007. */
#define OWNER_MISSING                                                                              \
    "public.device_state.owner: missing column (expected bigint); function "                       \
    "telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], integer[], integer[], "     \
    "bytea[], text, integer, bigint[]): missing; function telemetry.device_state_claim(bigint, "   \
    "bigint, boolean): missing"

#define VIEW_ARRAYS_SQL                                                                            \
    "SELECT string_agg(imei || ' ' || io_ids::text || ' ' || io_vals::text || ' ' || "             \
    "nx_ids::text || ' ' || nx_vals::text, '; ' ORDER BY imei) FROM telemetry.positions_io"

/* ---- helpers ------------------------------------------------------------------------------ */

static void schema_path(char *out, size_t cap, const char *file)
{
    snprintf(out, cap, "%s/%s", pgtest_schema_dir(), file);
}

/* Runs one schema file as one query string, as pgschema_apply does, and rolls back a
 * transaction it left open (failed). Returns the last result; PQclear it. */
static PGresult *run_file(PGconn *c, const char *path)
{
    char *sql = tu_read_file(path, NULL);
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    return r;
}

static void apply_file(PGconn *c, const char *path)
{
    PGresult *r = run_file(c, path);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", path, PQresultErrorMessage(r));
    PQclear(r);
}

static void apply_all(PGconn *c)
{
    char err[2048];
    int rc = pgschema_apply(c, pgtest_schema_dir(), err, sizeof err);
    if (rc != SCHEMA_FILES)
        fail_msg("pgschema_apply: %d %s", rc, err);
}

/* A database as the files before 006 made it: the v1 001, the current 002 .. 005, and the
 * daily partitions of today and tomorrow. */
static void create_v1(struct pgtest_db *db, const char *tag)
{
    static const char *const files[] = {"002_partitions.sql", "003_devices.sql",
                                        "004_device_state.sql", "005_commands.sql"};
    char path[512];
    pgtest_db_create(db, tag, false);
    apply_file(db->conn, V1_001_PATH);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        schema_path(path, sizeof path, files[i]);
        apply_file(db->conn, path);
    }
    assert_int_equal(
        pgtest_scalar_ll(db->conn, "SELECT created FROM telemetry.ensure_partitions(1)"), 2);
    assert_int_equal(pgtest_scalar_ll(db->conn,
                                      "SELECT count(*) FROM pg_attribute WHERE attrelid = "
                                      "'telemetry.positions'::regclass AND attnum > 0 AND NOT "
                                      "attisdropped"),
                     14);
}

/* "name type, ..." of rel's columns after codec, in column order. */
static const char *cols_after_codec(PGconn *c, const char *rel, char *out, size_t cap)
{
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER "
             "BY attnum) FROM pg_attribute WHERE attrelid = '%s'::regclass AND NOT attisdropped "
             "AND attnum > (SELECT attnum FROM pg_attribute WHERE attrelid = '%s'::regclass AND "
             "attname = 'codec')",
             rel, rel);
    return pgtest_scalar(c, sql, out, cap);
}

/* Every column of rel, "name type" in column order. */
static const char *all_cols(PGconn *c, const char *rel, char *out, size_t cap)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER "
             "BY attnum) FROM pg_attribute WHERE attrelid = '%s'::regclass AND attnum > 0 AND "
             "NOT attisdropped",
             rel);
    return pgtest_scalar(c, sql, out, cap);
}

/* The IO array columns of the table, the default partition and today's partition. */
static void assert_array_cols(PGconn *c)
{
    char v[512], today[64];
    assert_string_equal(cols_after_codec(c, "telemetry.positions", v, sizeof v), ARRAY_COLS);
    assert_string_equal(cols_after_codec(c, "telemetry.positions_default", v, sizeof v),
                        ARRAY_COLS);
    pgtest_scalar(c,
                  "SELECT 'telemetry.positions_' || to_char(now() AT TIME ZONE 'UTC', "
                  "'YYYYMMDD')",
                  today, sizeof today);
    assert_string_equal(cols_after_codec(c, today, v, sizeof v), ARRAY_COLS);
    /* at the end: codec is column 14 of 18 */
    assert_string_equal(pgtest_scalar(c,
                                      "SELECT string_agg(attnum::text, ' ' ORDER BY attnum) "
                                      "FROM pg_attribute WHERE attrelid = "
                                      "'telemetry.positions'::regclass AND attname IN ('codec', "
                                      "'io_ids', 'nx_vals') OR attrelid = "
                                      "'telemetry.positions'::regclass AND attnum = (SELECT "
                                      "max(attnum) FROM pg_attribute WHERE attrelid = "
                                      "'telemetry.positions'::regclass)",
                                      v, sizeof v),
                        "14 15 18");
}

/* The pg_locks modes pid holds on rel, comma-separated. */
static const char *locks_of(PGconn *c, int pid, const char *rel, char *out, size_t cap)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(mode, ',' ORDER BY mode) FROM pg_locks WHERE pid = %d AND "
             "relation = '%s'::regclass AND granted",
             pid, rel);
    return pgtest_scalar(c, sql, out, cap);
}

/* ---- fresh database ----------------------------------------------------------------------- */

static void test_fresh_columns(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[1024], w[1024], err[1024];
    pgtest_db_create(&db, "mig_fresh", true);
    assert_int_equal(
        pgtest_scalar_ll(db.conn, "SELECT created FROM telemetry.ensure_partitions(1)"), 2);
    assert_array_cols(db.conn);
    /* the view has the table's columns, names, types and order */
    all_cols(db.conn, "telemetry.positions", v, sizeof v);
    all_cols(db.conn, "telemetry.positions_io", w, sizeof w);
    assert_string_equal(w, v);
    assert_contains(v, "io jsonb, generation smallint, codec smallint, " ARRAY_COLS);
    /* volatility (i), parallel safety (s), strictness (s/-) of each function */
    pgtest_scalar(
        db.conn,
        "SELECT string_agg(proname || ':' || provolatile::text || proparallel::text || CASE WHEN "
        "proisstrict THEN 's' ELSE '-' END, ' ' ORDER BY proname) FROM pg_proc WHERE "
        "pronamespace = 'telemetry'::regnamespace AND proname = ANY ('{io_value, nx_value, "
        "io_u64, io_jsonb, jsonb_io_ids, jsonb_io_vals, jsonb_nx_ids, jsonb_nx_vals}')",
        v, sizeof v);
    assert_string_equal(v, "io_jsonb:iss io_u64:is- io_value:is- jsonb_io_ids:iss "
                           "jsonb_io_vals:iss jsonb_nx_ids:iss jsonb_nx_vals:iss nx_value:is-");
    assert_int_equal(pgschema_check(db.conn, COPYENC_ARRAYS, err, sizeof err), 0);
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
    /* re-applying changes nothing */
    apply_all(db.conn);
    all_cols(db.conn, "telemetry.positions", v, sizeof v);
    assert_string_equal(v, w);
    assert_array_cols(db.conn);
    /* a column of another type is named, not papered over */
    pgtest_exec(db.conn, "DROP VIEW telemetry.positions_io; ALTER TABLE telemetry.positions "
                         "ALTER COLUMN io_vals TYPE numeric[]");
    char path[512];
    schema_path(path, sizeof path, "006_io_arrays.sql");
    PGresult *r = run_file(db.conn, path);
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_contains(PQresultErrorMessage(r),
                    "telemetry.positions.io_vals: expected bigint[], found numeric[]");
    PQclear(r);
    pgtest_db_drop(&db);
}

/* ---- migration ---------------------------------------------------------------------------- */

/* Rows written in the arrays layout: the view's io is the object the jsonb layout would have
 * stored for the same elements in the same wire order (given here as that text). */
static void check_new_rows(PGconn *c)
{
    char v[512];
    pgtest_exec(c, "INSERT INTO telemetry.positions (imei, ts, received_at, codec, io_ids, "
                   "io_vals, nx_ids, nx_vals) VALUES "
                   "(4, now(), now(), 142, '{239,16,1,239}', '{1,-1,5,0}', '{385,1}', "
                   "ARRAY['\\x0a0bff', '\\x']::bytea[]), "
                   "(5, now(), now(), 8, '{}', '{}', '{}', '{}')");
    pgtest_scalar(c,
                  "SELECT (io = '{\"239\":1,\"16\":18446744073709551615,\"1\":5,\"239\":0,"
                  "\"385\":\"0a0bff\",\"1\":\"\"}'::jsonb) || ' ' || io::text FROM "
                  "telemetry.positions_io WHERE imei = 4",
                  v, sizeof v);
    assert_string_equal(v, "true {\"1\": \"\", \"16\": 18446744073709551615, \"239\": 0, \"385\": "
                           "\"0a0bff\"}");
    assert_string_equal(
        pgtest_scalar(c, "SELECT io::text FROM telemetry.positions_io WHERE imei = 5", v, sizeof v),
        "{}");
    /* the table keeps io NULL for them; the view passes their arrays through */
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM telemetry.positions WHERE imei IN "
                                         "(4, 5) AND io IS NULL AND io_ids IS NOT NULL"),
                     2);
    assert_string_equal(
        pgtest_scalar(
            c,
            "SELECT io_ids::text || ' ' || io_vals::text || ' ' || "
            "nx_ids::text || ' ' || nx_vals::text FROM telemetry.positions_io WHERE imei = 4",
            v, sizeof v),
        "{239,16,1,239} {1,-1,5,0} {385,1} {\"\\\\x0a0bff\",\"\\\\x\"}");
}

/* Old and new queries, over old and new rows. */
static void check_queries(PGconn *c)
{
    static const struct {
        const char *where;
        const char *imeis;
    } cases[] = {
        {"io->>'239' = '1'", "1"}, /* jsonb: the last 239 of imei 4 is 0 */
        {"telemetry.io_value(io_ids, io_vals, 239) = 1", "1,4"}, /* arrays: the first */
        {"telemetry.io_u64(telemetry.io_value(io_ids, io_vals, 16)) = 18446744073709551615", "1,4"},
        {"(io->>'16')::numeric = 18446744073709551615", "1,4"},
        {"telemetry.io_value(io_ids, io_vals, 78) = -9223372036854775808", "3"},
        {"telemetry.nx_value(nx_ids, nx_vals, 385) = '\\x0a0bff'", "1,4"},
        {"io->>'385' = '0a0bff'", "1,4"},
        {"cardinality(io_ids) = 0 AND io = '{}'", "2,5"},
    };
    char sql[512], v[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(sql, sizeof sql,
                 "SELECT coalesce(string_agg(imei::text, ',' ORDER BY imei), '') FROM "
                 "telemetry.positions_io WHERE %s",
                 cases[i].where);
        pgtest_scalar(c, sql, v, sizeof v);
        if (strcmp(v, cases[i].imeis) != 0)
            fail_msg("WHERE %s: imeis '%s', want '%s'", cases[i].where, v, cases[i].imeis);
    }
}

static void test_migrate_legacy_rows(void **state)
{
    (void)state;
    struct pgtest_db db;
    char before[1024], v[1024], w[1024], err[1024];
    create_v1(&db, "mig_legacy");
    pgtest_exec(db.conn, LEGACY_ROWS_SQL);
    const char *snap = "SELECT string_agg(imei || ' ' || ts || ' ' || tableoid::regclass || ' ' "
                       "|| io::text, '; ' ORDER BY imei) FROM telemetry.positions";
    pgtest_scalar(db.conn, snap, before, sizeof before);
    assert_contains(before, "3 2020-01-01 00:00:00+00 telemetry.positions_default {\"66\": 12000");
    /* before 006 (and 007): the jsonb layout's check names only 007's owner column and
     * functions, the arrays one also the IO array columns */
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_string_equal(err, OWNER_MISSING);
    assert_int_equal(pgschema_check(db.conn, COPYENC_ARRAYS, err, sizeof err), PGSCHEMA_E_FAIL);
    assert_contains(err, "telemetry.positions.io_ids: missing column (expected integer[])");
    assert_contains(err, "telemetry.positions.nx_vals: missing column (expected bytea[])");
    assert_contains(err, OWNER_MISSING);

    apply_all(db.conn);
    assert_array_cols(db.conn);
    all_cols(db.conn, "telemetry.positions", v, sizeof v);
    all_cols(db.conn, "telemetry.positions_io", w, sizeof w);
    assert_string_equal(w, v);
    assert_int_equal(pgschema_check(db.conn, COPYENC_ARRAYS, err, sizeof err), 0);
    assert_int_equal(pgschema_check(db.conn, COPYENC_JSONB, err, sizeof err), 0);
    /* the old rows are as they were, arrays NULL */
    pgtest_scalar(db.conn, snap, v, sizeof v);
    assert_string_equal(v, before);
    assert_int_equal(pgtest_scalar_ll(db.conn,
                                      "SELECT count(*) FROM telemetry.positions WHERE io IS NOT "
                                      "NULL AND io_ids IS NULL AND io_vals IS NULL AND nx_ids IS "
                                      "NULL AND nx_vals IS NULL"),
                     3);
    /* through the view: arrays converted from io, io as stored */
    assert_string_equal(pgtest_scalar(db.conn, VIEW_ARRAYS_SQL, v, sizeof v), LEGACY_ARRAYS);
    assert_int_equal(pgtest_scalar_ll(db.conn,
                                      "SELECT count(*) FROM telemetry.positions_io v JOIN "
                                      "telemetry.positions p USING (imei) WHERE v.io = p.io"),
                     3);
    check_new_rows(db.conn);
    check_queries(db.conn);
    pgtest_db_drop(&db);
}

/* ---- the functions ------------------------------------------------------------------------ */

static void test_functions(void **state)
{
    (void)state;
    static const struct {
        const char *expr;
        const char *want; /* "null" for NULL */
    } cases[] = {
        {"telemetry.io_value('{1,2,1}', '{10,20,30}', 1)", "10"}, /* repeated: the first */
        {"telemetry.io_value('{1,2,1}', '{10,20,30}', 2)", "20"},
        {"telemetry.io_value('{1,2,1}', '{10,20,30}', 3)", "null"},
        {"telemetry.io_value('{}', '{}', 1)", "null"},
        {"telemetry.io_value(NULL, NULL, 1)", "null"},
        {"telemetry.io_value('{7}', '{-1}', 7)", "-1"},
        {"telemetry.nx_value('{5,5}', ARRAY['\\x01', '\\x02']::bytea[], 5)", "\\x01"},
        {"telemetry.nx_value('{5}', ARRAY['\\x']::bytea[], 5)", "\\x"}, /* empty, not NULL */
        {"telemetry.nx_value('{}', '{}', 5)", "null"},
        {"telemetry.io_u64(-1)", "18446744073709551615"},
        {"telemetry.io_u64(-9223372036854775808)", "9223372036854775808"},
        {"telemetry.io_u64(9223372036854775807)", "9223372036854775807"},
        {"telemetry.io_u64(0)", "0"},
        {"telemetry.io_u64(NULL)", "null"},
        {"telemetry.io_jsonb('{}', '{}', '{}', '{}')", "{}"},
        {"telemetry.io_jsonb('{7,7}', '{1,2}', '{}', '{}')", "{\"7\": 2}"}, /* the last */
        {"telemetry.io_jsonb('{9,10}', '{-1,0}', '{9}', ARRAY['\\xAB']::bytea[])",
         "{\"9\": \"ab\", \"10\": 0}"}, /* NX after fixed on the wire: it wins */
        {"telemetry.io_jsonb(NULL, NULL, NULL, NULL)", "null"},
        {"telemetry.jsonb_io_ids('{\"10\": 1, \"9\": 2, \"300\": \"ff\"}')", "{9,10}"},
        {"telemetry.jsonb_io_vals('{\"10\": 1, \"9\": 2, \"300\": \"ff\"}')", "{2,1}"},
        {"telemetry.jsonb_nx_ids('{\"10\": 1, \"9\": 2, \"300\": \"ff\", \"4\": \"\"}')",
         "{4,300}"},
        {"telemetry.jsonb_nx_vals('{\"10\": 1, \"9\": 2, \"300\": \"ff\", \"4\": \"\"}')",
         "{\"\\\\x\",\"\\\\xff\"}"},
        {"telemetry.jsonb_io_vals('{\"1\": 18446744073709551615, \"2\": 9223372036854775807, "
         "\"3\": 9223372036854775808}')",
         "{-1,9223372036854775807,-9223372036854775808}"},
        {"telemetry.jsonb_io_ids('{}')", "{}"},
        {"telemetry.jsonb_io_vals('{}')", "{}"},
        {"telemetry.jsonb_nx_ids('{}')", "{}"},
        {"telemetry.jsonb_nx_vals('{}')", "{}"},
        {"telemetry.jsonb_io_ids(NULL)", "null"},
        {"(SELECT telemetry.io_jsonb(telemetry.jsonb_io_ids(j), telemetry.jsonb_io_vals(j), "
         "telemetry.jsonb_nx_ids(j), telemetry.jsonb_nx_vals(j)) = j FROM (SELECT '{\"1\": 0, "
         "\"16\": 18446744073709551615, \"385\": \"\", \"386\": \"00ff\"}'::jsonb AS j) s)",
         "true"},
    };
    struct pgtest_db db;
    char sql[1024], v[256];
    pgtest_db_create(&db, "mig_funcs", true);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT coalesce((%s)::text, 'null')", cases[i].expr);
        pgtest_scalar(db.conn, sql, v, sizeof v);
        if (strcmp(v, cases[i].want) != 0)
            fail_msg("%s = '%s', want '%s'", cases[i].expr, v, cases[i].want);
    }
    pgtest_db_drop(&db);
}

/* ---- plans -------------------------------------------------------------------------------- */

/* The lines of EXPLAIN (COSTS OFF, VERBOSE if verbose) sql, joined with "\n" into out. */
static const char *explain(PGconn *c, bool verbose, const char *sql, char *out, size_t cap)
{
    char q[2048];
    snprintf(q, sizeof q, "EXPLAIN (COSTS OFF, VERBOSE %s) %s", verbose ? "on" : "off", sql);
    PGresult *r = pgtest_query(c, q);
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < PQntuples(r) && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s\n", PQgetvalue(r, i, 0));
    PQclear(r);
    return out;
}

/* The readers are inlined (no function call left in the plan); imei/ts predicates through the
 * view use the (imei, ts) index of the one partition they can touch. Seq scans are off so an
 * index that can be used is used, on these small tables. */
static void test_plans(void **state)
{
    (void)state;
    struct pgtest_db db;
    char plan[8192], day[16], part[32], sql[1024];
    pgtest_db_create(&db, "mig_plans", true);
    PGconn *c = db.conn;
    assert_int_equal(pgtest_scalar_ll(c, "SELECT created FROM telemetry.ensure_partitions(1)"), 2);
    pgtest_exec(c, "SET enable_seqscan = off");
    pgtest_scalar(c, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')", day, sizeof day);
    snprintf(part, sizeof part, "positions_%.4s%.2s%.2s", day, day + 5, day + 8);

    explain(c, true,
            "SELECT imei FROM telemetry.positions WHERE telemetry.io_value(io_ids, io_vals, "
            "239) = 1",
            plan, sizeof plan);
    assert_contains(plan, "io_vals[array_position(");
    assert_contains(plan, "io_ids, 239)] = 1)");
    assert_not_contains(plan, "io_value");
    explain(c, true,
            "SELECT telemetry.io_u64(io_vals[1]), telemetry.nx_value(nx_ids, nx_vals, 3) "
            "FROM telemetry.positions",
            plan, sizeof plan);
    assert_contains(plan, "CASE WHEN");
    assert_contains(plan, "nx_vals[array_position(");
    assert_not_contains(plan, "io_u64");
    assert_not_contains(plan, "nx_value");

    snprintf(sql, sizeof sql,
             "SELECT imei, ts, io FROM telemetry.positions_io WHERE imei = 7 AND ts >= '%s "
             "01:00+00' AND ts < '%s 02:00+00' AND telemetry.io_value(io_ids, io_vals, 239) = 1",
             day, day);
    explain(c, true, sql, plan, sizeof plan);
    char want[160];
    snprintf(want, sizeof want, "using %s_imei_ts_idx on telemetry.%s p", part, part);
    assert_contains(plan, want);
    assert_contains(plan, "Index Cond: ((p.imei = 7) AND (p.ts >= ");
    assert_not_contains(plan, "Append"); /* one partition: the others are pruned */
    assert_not_contains(plan, "positions_default");
    assert_contains(plan, "array_position(COALESCE(p.io_ids, telemetry.jsonb_io_ids(p.io)), 239)");

    /* the last position of N devices: one backward index scan per partition and device */
    explain(
        c, false,
        "SELECT d.imei, p.ts, p.lat, p.io FROM unnest(ARRAY[1, 2]::bigint[]) AS d(imei) CROSS JOIN "
        "LATERAL (SELECT * FROM telemetry.positions_io q WHERE q.imei = d.imei ORDER BY "
        "q.ts DESC LIMIT 1) p",
        plan, sizeof plan);
    assert_contains(plan, "Index Scan Backward using positions_default_imei_ts_idx");
    assert_contains(plan, "Merge Append");
    pgtest_db_drop(&db);
}

/* ---- backfill ----------------------------------------------------------------------------- */

static void test_backfill(void **state)
{
    (void)state;
    struct pgtest_db db;
    char before[2048], v[2048], today[64];
    create_v1(&db, "mig_backfill");
    PGconn *c = db.conn;
    pgtest_exec(c, LEGACY_ROWS_SQL);
    /* one more in the default partition; two a gateway cannot have written (not exact) */
    pgtest_exec(c, "INSERT INTO telemetry.positions (imei, ts, received_at, io) VALUES "
                   "(6, '2020-01-01 00:00+00', now(), '{\"1\": 3}'), "
                   "(7, now(), now(), '{\"1\": 1.5}'), (8, now(), now(), '{\"2\": \"ABCD\"}')");
    apply_all(c);
    const char *snap = "SELECT string_agg(v::text, '; ' ORDER BY v.imei) FROM "
                       "telemetry.positions_io v";
    pgtest_scalar(c, snap, before, sizeof before);
    pgtest_scalar(c,
                  "SELECT 'telemetry.positions_' || to_char(now() AT TIME ZONE 'UTC', "
                  "'YYYYMMDD')",
                  today, sizeof today);

    /* the default partition one row per call, then none */
    const char *one = "SELECT telemetry.io_arrays_backfill('telemetry.positions_default', 1)";
    assert_int_equal(pgtest_scalar_ll(c, one), 1);
    assert_int_equal(pgtest_scalar_ll(c, one), 1);
    assert_int_equal(pgtest_scalar_ll(c, one), 0);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT telemetry.io_arrays_backfill('%s')", today);
    assert_int_equal(pgtest_scalar_ll(c, sql), 2); /* imei 1 and 2, not 7 and 8 */
    assert_int_equal(pgtest_scalar_ll(c, sql), 0);

    /* converted rows: io NULL, arrays set; the inexact ones untouched; the view unchanged */
    pgtest_scalar(c,
                  "SELECT string_agg(imei || ':' || (io IS NULL) || (io_ids IS NULL) || (nx_vals "
                  "IS NULL), ' ' ORDER BY imei) FROM telemetry.positions",
                  v, sizeof v);
    assert_string_equal(v, "1:truefalsefalse 2:truefalsefalse 3:truefalsefalse "
                           "6:truefalsefalse 7:falsetruetrue 8:falsetruetrue");
    pgtest_scalar(c, snap, v, sizeof v);
    assert_string_equal(v, before);
    assert_string_equal(pgtest_scalar(c, VIEW_ARRAYS_SQL " WHERE imei <= 3", v, sizeof v),
                        LEGACY_ARRAYS);

    PGresult *r = PQexec(c, "SELECT telemetry.io_arrays_backfill('telemetry.positions')");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_contains(PQresultErrorMessage(r), "telemetry.positions is not a partition of");
    PQclear(r);
    r = PQexec(c, "SELECT telemetry.io_arrays_backfill('telemetry.positions_default', 0)");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_contains(PQresultErrorMessage(r), "rows_max must be > 0, not 0");
    PQclear(r);
    pgtest_db_drop(&db);
}

/* ---- locks -------------------------------------------------------------------------------- */

/* Applies schema file within APPLY_MS_MAX (statement_timeout turns a hang into a failure). */
static void reapply_file_quickly(PGconn *c, const char *file, const char *while_what)
{
    char path[512];
    schema_path(path, sizeof path, file);
    uint64_t t0 = tu_now_ms();
    apply_file(c, path);
    uint64_t ms = tu_now_ms() - t0;
    if (ms > APPLY_MS_MAX)
        fail_msg("re-applying %s while %s took %llu ms", file, while_what, (unsigned long long)ms);
}

static void reapply_quickly(PGconn *c, const char *while_what)
{
    reapply_file_quickly(c, "006_io_arrays.sql", while_what);
}

/* On a migrated database, 006 takes nothing stronger than ACCESS SHARE on positions: it goes
 * through while a gateway's transaction holds COPY's lock (ROW EXCLUSIVE) and a report reads
 * the view, and even while a session holds EXCLUSIVE on the table, which conflicts with every
 * mode but ACCESS SHARE. */
static void test_reapply_takes_no_strong_lock(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[256];
    create_v1(&db, "mig_reapply");
    pgtest_exec(db.conn, LEGACY_ROWS_SQL);
    apply_all(db.conn);
    pgtest_exec(db.conn, "SET statement_timeout = '20s'");

    PGconn *gw = pgtest_connect(&db);
    PGconn *report = pgtest_connect(&db);
    pgtest_exec(gw, "BEGIN");
    pgtest_exec(gw, "INSERT INTO telemetry.positions (imei, ts, received_at, io_ids, io_vals, "
                    "nx_ids, nx_vals) VALUES (9, now(), now(), '{1}', '{1}', '{}', '{}')");
    pgtest_exec(report, "BEGIN");
    assert_int_equal(pgtest_scalar_ll(report, "SELECT count(*) FROM telemetry.positions_io"), 3);
    assert_string_equal(locks_of(db.conn, PQbackendPID(gw), "telemetry.positions", v, sizeof v),
                        "RowExclusiveLock");
    assert_string_equal(
        locks_of(db.conn, PQbackendPID(report), "telemetry.positions_io", v, sizeof v),
        "AccessShareLock");
    reapply_quickly(db.conn, "a COPY transaction and a reader of the view are open");
    pgtest_exec(gw, "COMMIT");

    PGconn *locker = pgtest_connect(&db);
    pgtest_exec(locker, "BEGIN");
    pgtest_exec(locker, "LOCK TABLE telemetry.positions IN EXCLUSIVE MODE");
    assert_string_equal(locks_of(db.conn, PQbackendPID(locker), "telemetry.positions", v, sizeof v),
                        "ExclusiveLock");
    reapply_quickly(db.conn, "a session holds EXCLUSIVE on telemetry.positions");
    pgtest_exec(locker, "COMMIT");
    pgtest_exec(report, "COMMIT");

    assert_array_cols(db.conn);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM telemetry.positions_io "
                                               "WHERE telemetry.io_value(io_ids, io_vals, 1) = 1"),
                     1);
    PQfinish(locker);
    PQfinish(report);
    PQfinish(gw);
    pgtest_db_drop(&db);
}

/* 007 on a database that has public.device_state.owner goes through while gateways run: a
 * batch's transaction holds ROW EXCLUSIVE on device_state and its device's row (the fenced
 * upsert), a state load's claim holds another row, a report reads the table. The batch
 * commits afterwards under its token. */
static void test_reapply_007_while_gateways_run(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[256], sql[512];
    pgtest_db_create(&db, "mig_owner", true);
    pgtest_exec(db.conn, "SET statement_timeout = '20s'");
    PGconn *gw = pgtest_connect(&db), *load = pgtest_connect(&db), *report = pgtest_connect(&db);
    long long token = pgtest_scalar_ll(gw, "SELECT owner FROM telemetry.device_state_claim(1, 0, "
                                           "false)");
    pgtest_exec(gw, "BEGIN");
    snprintf(sql, sizeof sql,
             "SELECT telemetry.device_state_upsert_owned(ARRAY[1], ARRAY[1000], ARRAY[2000], "
             "ARRAY[3], ARRAY[4], ARRAY['\\x01']::bytea[], 'gw', 0, ARRAY[%lld])",
             token);
    assert_int_equal(pgtest_scalar_ll(gw, sql), 1);
    pgtest_exec(load, "BEGIN");
    assert_string_equal(pgtest_scalar(load,
                                      "SELECT claimed FROM telemetry.device_state_claim(2, 0, "
                                      "false)",
                                      v, sizeof v),
                        "t");
    pgtest_exec(report, "BEGIN");
    assert_int_equal(pgtest_scalar_ll(report, "SELECT count(*) FROM public.device_state"), 1);
    assert_string_equal(locks_of(db.conn, PQbackendPID(gw), "public.device_state", v, sizeof v),
                        "RowExclusiveLock");
    assert_string_equal(locks_of(db.conn, PQbackendPID(report), "public.device_state", v, sizeof v),
                        "AccessShareLock");
    reapply_file_quickly(db.conn, "007_device_owner.sql",
                         "a batch, a state load and a reader of device_state are open");
    pgtest_exec(gw, "COMMIT");
    pgtest_exec(load, "COMMIT");
    pgtest_exec(report, "COMMIT");
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM public.device_state WHERE imei = 1 AND owner = %lld AND "
             "dedup = '\\x01'",
             token);
    assert_int_equal(pgtest_scalar_ll(db.conn, sql), 1);
    assert_int_equal(pgtest_scalar_ll(db.conn, "SELECT count(*) FROM public.device_state"), 2);
    PQfinish(report);
    PQfinish(load);
    PQfinish(gw);
    pgtest_db_drop(&db);
}

/* Nothing of 006 exists: no column, function or view. */
static void assert_no_006(PGconn *c)
{
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM pg_attribute a JOIN pg_class k ON "
                                         "k.oid = a.attrelid WHERE k.relnamespace = "
                                         "'telemetry'::regnamespace AND a.attname IN ('io_ids', "
                                         "'io_vals', 'nx_ids', 'nx_vals')"),
                     0);
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM pg_proc WHERE pronamespace = "
                                         "'telemetry'::regnamespace AND proname IN ('io_value', "
                                         "'io_jsonb', 'jsonb_io_ids', 'io_arrays_backfill')"),
                     0);
    assert_int_equal(pgtest_scalar_ll(c, "SELECT count(*) FROM pg_class WHERE relname = "
                                         "'positions_io'"),
                     0);
}

/* Adding the columns needs ACCESS EXCLUSIVE: behind a long transaction on the table it gives
 * up after 006's 2 s lock timeout (not the file's 5 s), with a named error, having changed
 * nothing, and succeeds once that transaction has ended. */
static void test_add_columns_lock_timeout(void **state)
{
    (void)state;
    struct pgtest_db db;
    char v[256], path[512], err[2048];
    create_v1(&db, "mig_timeout");
    pgtest_exec(db.conn, LEGACY_ROWS_SQL);
    pgtest_exec(db.conn, "SET statement_timeout = '20s'");
    PGconn *report = pgtest_connect(&db);
    pgtest_exec(report, "BEGIN");
    assert_int_equal(pgtest_scalar_ll(report, "SELECT count(*) FROM telemetry.positions"), 3);
    assert_string_equal(locks_of(db.conn, PQbackendPID(report), "telemetry.positions", v, sizeof v),
                        "AccessShareLock");

    schema_path(path, sizeof path, "006_io_arrays.sql");
    uint64_t t0 = tu_now_ms();
    PGresult *r = run_file(db.conn, path);
    uint64_t ms = tu_now_ms() - t0;
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "55P03");
    assert_contains(PQresultErrorMessage(r), "006_io_arrays: cannot add the IO array columns to "
                                             "telemetry.positions: canceling statement due to "
                                             "lock timeout");
    assert_contains(PQresultErrorField(r, PG_DIAG_MESSAGE_HINT), "nothing was changed");
    PQclear(r);
    if (ms < ADD_TIMEOUT_MS - 100 || ms >= FILE_TIMEOUT_MS)
        fail_msg("006 gave up after %llu ms, want about %d", (unsigned long long)ms,
                 ADD_TIMEOUT_MS);
    assert_int_equal(PQtransactionStatus(db.conn), PQTRANS_IDLE);
    assert_no_006(db.conn);

    /* the same through pgschema_apply (avlgate run --apply-schema): 001 .. 005 pass */
    assert_int_equal(pgschema_apply(db.conn, pgtest_schema_dir(), err, sizeof err),
                     PGSCHEMA_E_FAIL);
    assert_contains(err, "006_io_arrays.sql: ERROR:  006_io_arrays: cannot add the IO array");
    assert_no_006(db.conn);

    pgtest_exec(report, "COMMIT");
    apply_all(db.conn);
    assert_array_cols(db.conn);
    assert_string_equal(pgtest_scalar(db.conn, VIEW_ARRAYS_SQL, v, sizeof v), LEGACY_ARRAYS);
    PQfinish(report);
    pgtest_db_drop(&db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_columns),
        cmocka_unit_test(test_migrate_legacy_rows),
        cmocka_unit_test(test_functions),
        cmocka_unit_test(test_plans),
        cmocka_unit_test(test_backfill),
        cmocka_unit_test(test_reapply_takes_no_strong_lock),
        cmocka_unit_test(test_reapply_007_while_gateways_run),
        cmocka_unit_test(test_add_columns_lock_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
