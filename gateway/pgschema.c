/* pgschema.c — checks, applies and maintains the PostgreSQL schema the gateway depends on.
 *
 * Owns the gateway's expectations of the database: the tables and columns it writes (the
 * COPY column list of copyenc.h, device_state) and the functions it calls, with their types.
 * The DDL itself lives in the .sql files of schema/postgres. Blocking libpq, called from the main
 * thread at start-up (check, --apply-schema, first partitions) and by the daily maintenance on a
 * connection of its own; never on a shard's hot path. Allocation is fine here.
 */
#include "gateway/pgschema.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * What the gateway expects
 * ------------------------------------------------------------------------------------------- */

struct col_expect {
    const char *rel;  /* schema-qualified relation */
    const char *col;  /* column name */
    const char *type; /* format_type() of the column */
};

/* telemetry.positions in copyenc_columns(layout) order: the head, the layout's IO columns,
 * the tail; the gateway writes every one of them. */
static const struct col_expect positions_head[] = {
    {"telemetry.positions", "imei", "bigint"},
    {"telemetry.positions", "ts", "timestamp with time zone"},
    {"telemetry.positions", "received_at", "timestamp with time zone"},
    {"telemetry.positions", "priority", "smallint"},
    {"telemetry.positions", "lon", "double precision"},
    {"telemetry.positions", "lat", "double precision"},
    {"telemetry.positions", "altitude", "smallint"},
    {"telemetry.positions", "angle", "smallint"},
    {"telemetry.positions", "satellites", "smallint"},
    {"telemetry.positions", "speed", "smallint"},
    {"telemetry.positions", "event_id", "integer"},
};
static const struct col_expect io_arrays[] = {
    {"telemetry.positions", "io_ids", "integer[]"},
    {"telemetry.positions", "io_vals", "bigint[]"},
    {"telemetry.positions", "nx_ids", "integer[]"},
    {"telemetry.positions", "nx_vals", "bytea[]"},
};
static const struct col_expect io_jsonb[] = {{"telemetry.positions", "io", "jsonb"}};
static const struct col_expect io_raw[] = {{"telemetry.positions", "io_raw", "bytea"}};
static const struct col_expect positions_tail_and_more[] = {
    {"telemetry.positions", "generation", "smallint"},
    {"telemetry.positions", "codec", "smallint"},
    /* written by telemetry.device_state_upsert, read by telemetry.device_state_get */
    {"public.device_state", "imei", "bigint"},
    {"public.device_state", "last_ts", "timestamp with time zone"},
    {"public.device_state", "last_lon", "double precision"},
    {"public.device_state", "last_lat", "double precision"},
    {"public.device_state", "last_received_at", "timestamp with time zone"},
    {"public.device_state", "instance", "text"},
    {"public.device_state", "shard", "integer"},
    {"public.device_state", "dedup", "bytea"},
    {"public.device_state", "updated_at", "timestamp with time zone"},
    {"public.device_state", "owner", "bigint"},
    /* read for --devices known */
    {"public.devices", "imei", "bigint"},
    {"public.devices", "enabled", "boolean"},
};

#define LEN(a) (sizeof(a) / sizeof((a)[0]))
enum {
    POSITIONS_TAIL = 2, /* of positions_tail_and_more */
    COLS_EXPECTED_MAX = LEN(positions_head) + LEN(io_arrays) + LEN(positions_tail_and_more),
};

/* Every column the gateway needs with the layout, positions' first (in COPY order); returns
 * how many, of which *positions_len are telemetry.positions'. */
static size_t cols_expected(enum copyenc_layout layout, const struct col_expect **out,
                            size_t *positions_len)
{
    static const struct {
        const struct col_expect *cols;
        size_t len;
    } io[COPYENC_LAYOUTS] = {
        [COPYENC_ARRAYS] = {io_arrays, LEN(io_arrays)},
        [COPYENC_JSONB] = {io_jsonb, LEN(io_jsonb)},
        [COPYENC_RAW] = {io_raw, LEN(io_raw)},
    };
    assert((unsigned)layout < COPYENC_LAYOUTS);
    size_t io_len = io[layout].len;
    size_t n = 0;
    for (size_t i = 0; i < LEN(positions_head); i++)
        out[n++] = &positions_head[i];
    for (size_t i = 0; i < io_len; i++)
        out[n++] = &io[layout].cols[i];
    for (size_t i = 0; i < LEN(positions_tail_and_more); i++)
        out[n++] = &positions_tail_and_more[i];
    *positions_len = LEN(positions_head) + io_len + POSITIONS_TAIL;
    assert(*positions_len == (size_t)copyenc_columns_len(layout) && n <= COLS_EXPECTED_MAX);
    return n;
}

struct fn_expect {
    const char *signature; /* to_regprocedure() input */
    const char *result;    /* pg_get_function_result() */
};

static const struct fn_expect fns_expected[] = {
    {"telemetry.device_state_upsert_owned(bigint[], bigint[], bigint[], integer[], integer[], "
     "bytea[], text, integer, bigint[])",
     "integer"},
    {"telemetry.device_state_claim(bigint, bigint, boolean)",
     "TABLE(last_ts_ms bigint, dedup bytea, enabled boolean, owner bigint, claimed boolean)"},
    {"telemetry.ensure_partitions(integer, integer)",
     "TABLE(created integer, missing integer, detail text)"},
};

enum { FNS_EXPECTED_LEN = sizeof fns_expected / sizeof fns_expected[0] };

/* ---------------------------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------------------------- */

/* Problems joined with "; " into the caller's buffer; the end is cut with "..." if it is
 * full. */
struct msgs {
    char *buf;
    size_t cap;
    size_t len;
    int count;
};

static void msgs_init(struct msgs *m, char *buf, size_t cap)
{
    m->buf = buf;
    m->cap = cap;
    m->len = 0;
    m->count = 0;
    if (cap > 0)
        buf[0] = '\0';
}

__attribute__((format(printf, 2, 3))) static void msgs_add(struct msgs *m, const char *fmt, ...)
{
    m->count++;
    if (m->cap == 0 || m->len + 1 >= m->cap)
        return;
    if (m->count > 1) {
        int n = snprintf(m->buf + m->len, m->cap - m->len, "; ");
        m->len += (size_t)n;
        if (m->len >= m->cap)
            goto full;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(m->buf + m->len, m->cap - m->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    m->len += (size_t)n;
    if (m->len < m->cap)
        return;
full:
    m->len = m->cap - 1;
    if (m->cap > 4)
        memcpy(m->buf + m->cap - 4, "...", 4);
}

/* The server's message without its trailing newline. */
static void set_pg_error(char *err, size_t err_cap, const char *what, const char *pg_msg)
{
    if (err_cap == 0)
        return;
    size_t n = strlen(pg_msg);
    while (n > 0 && (pg_msg[n - 1] == '\n' || pg_msg[n - 1] == ' '))
        n--;
    snprintf(err, err_cap, "%s: %.*s", what, (int)n, pg_msg);
}

/* Runs a query with text parameters; returns the result if it has tuples, else NULL with the
 * error in err. */
static PGresult *query(PGconn *conn, const char *what, const char *sql, int params_len,
                       const char *const *params, char *err, size_t err_cap)
{
    PGresult *res = PQexecParams(conn, sql, params_len, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        return res;
    set_pg_error(err, err_cap, what, res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
    PQclear(res);
    return NULL;
}

/* A text[] literal of the given strings, each double-quoted (types contain spaces). The
 * strings are this file's constants: no quote or backslash in them. */
static void array_literal(char *out, size_t cap, const char *const *items, size_t items_len)
{
    size_t len = 0;
    out[len++] = '{';
    for (size_t i = 0; i < items_len; i++) {
        int n = snprintf(out + len, cap - len, "%s\"%s\"", i ? "," : "", items[i]);
        if (n < 0 || (size_t)n >= cap - len)
            abort(); /* the constants above outgrew the buffer */
        len += (size_t)n;
    }
    if (len + 2 > cap)
        abort();
    out[len++] = '}';
    out[len] = '\0';
}

/* ---------------------------------------------------------------------------------------------
 * pgschema_check
 * ------------------------------------------------------------------------------------------- */

static int check_columns(PGconn *conn, enum copyenc_layout layout, struct msgs *m, char *err,
                         size_t err_cap)
{
    static const char sql[] =
        "SELECT e.rel, e.col, c.oid IS NOT NULL, a.attnum IS NOT NULL,"
        "       pg_catalog.format_type(a.atttypid, a.atttypmod)"
        " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(rel, col, ord)"
        " LEFT JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(e.rel)"
        " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = e.col"
        "      AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY e.ord";
    const struct col_expect *cols[COLS_EXPECTED_MAX];
    size_t positions_len;
    size_t n = cols_expected(layout, cols, &positions_len);
    const char *rels[COLS_EXPECTED_MAX], *names[COLS_EXPECTED_MAX];
    for (size_t i = 0; i < n; i++) {
        rels[i] = cols[i]->rel;
        names[i] = cols[i]->col;
    }
    char rels_lit[2048], names_lit[2048];
    array_literal(rels_lit, sizeof rels_lit, rels, n);
    array_literal(names_lit, sizeof names_lit, names, n);
    const char *params[2] = {rels_lit, names_lit};

    PGresult *res = query(conn, "schema check (columns)", sql, 2, params, err, err_cap);
    if (!res)
        return -1;
    if (PQntuples(res) != (int)n) {
        PQclear(res);
        snprintf(err, err_cap, "schema check (columns): unexpected result");
        return -1;
    }
    const char *missing_rel = NULL;
    for (int i = 0; i < PQntuples(res); i++) {
        const struct col_expect *e = cols[i];
        bool has_rel = PQgetvalue(res, i, 2)[0] == 't';
        bool has_col = PQgetvalue(res, i, 3)[0] == 't';
        if (!has_rel) {
            /* Once per table, not once per column. */
            if (!missing_rel || strcmp(missing_rel, e->rel) != 0)
                msgs_add(m, "%s: missing table", e->rel);
            missing_rel = e->rel;
            continue;
        }
        if (!has_col) {
            msgs_add(m, "%s.%s: missing column (expected %s)", e->rel, e->col, e->type);
            continue;
        }
        const char *found = PQgetvalue(res, i, 4);
        if (strcmp(found, e->type) != 0)
            msgs_add(m, "%s.%s: expected %s, found %s", e->rel, e->col, e->type, found);
    }
    PQclear(res);
    return 0;
}

static int check_positions_shape(PGconn *conn, enum copyenc_layout layout, struct msgs *m,
                                 char *err, size_t err_cap)
{
    static const char part_sql[] =
        "SELECT c.relkind::text, pt.partstrat::text, pt.partnatts, a.attname,"
        "       COALESCE(pt.partdefid <> 0, false)"
        " FROM pg_catalog.pg_class c"
        " LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = c.oid"
        " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]"
        " WHERE c.oid = pg_catalog.to_regclass('telemetry.positions')";
    PGresult *res = query(conn, "schema check (partitioning)", part_sql, 0, NULL, err, err_cap);
    if (!res)
        return -1;
    if (PQntuples(res) == 1) {
        if (strcmp(PQgetvalue(res, 0, 0), "p") != 0) {
            msgs_add(m, "telemetry.positions: expected a partitioned table");
        } else {
            if (strcmp(PQgetvalue(res, 0, 1), "r") != 0 ||
                strcmp(PQgetvalue(res, 0, 2), "1") != 0 || strcmp(PQgetvalue(res, 0, 3), "ts") != 0)
                msgs_add(m, "telemetry.positions: expected PARTITION BY RANGE (ts)");
            if (PQgetvalue(res, 0, 4)[0] != 't')
                msgs_add(m, "telemetry.positions: no DEFAULT partition (a row outside the daily "
                            "partitions would fail its whole COPY batch)");
        }
    }
    PQclear(res);

    /* A NOT NULL column the COPY does not fill fails every batch. */
    static const char extra_sql[] =
        "SELECT a.attname FROM pg_catalog.pg_attribute a"
        " WHERE a.attrelid = pg_catalog.to_regclass('telemetry.positions')"
        "   AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull AND NOT a.atthasdef"
        "   AND a.attname <> ALL ($1::text[])"
        " ORDER BY a.attnum";
    const struct col_expect *cols[COLS_EXPECTED_MAX];
    size_t positions_len;
    cols_expected(layout, cols, &positions_len);
    const char *names[COLS_EXPECTED_MAX];
    for (size_t i = 0; i < positions_len; i++)
        names[i] = cols[i]->col;
    char names_lit[1024];
    array_literal(names_lit, sizeof names_lit, names, positions_len);
    const char *params[1] = {names_lit};
    res = query(conn, "schema check (extra columns)", extra_sql, 1, params, err, err_cap);
    if (!res)
        return -1;
    for (int i = 0; i < PQntuples(res); i++)
        msgs_add(m,
                 "telemetry.positions.%s: NOT NULL without a default, and the gateway does not "
                 "write it",
                 PQgetvalue(res, i, 0));
    PQclear(res);
    return 0;
}

static int check_device_state_key(PGconn *conn, struct msgs *m, char *err, size_t err_cap)
{
    /* ON CONFLICT (imei) needs a unique, immediate, non-partial index on exactly (imei). */
    static const char sql[] =
        "SELECT pg_catalog.to_regclass('public.device_state') IS NOT NULL,"
        "  EXISTS (SELECT 1 FROM pg_catalog.pg_index i"
        "          JOIN pg_catalog.pg_attribute a"
        "            ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        "          WHERE i.indrelid = pg_catalog.to_regclass('public.device_state')"
        "            AND i.indisunique AND i.indimmediate AND i.indnkeyatts = 1"
        "            AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'imei')";
    PGresult *res = query(conn, "schema check (device_state key)", sql, 0, NULL, err, err_cap);
    if (!res)
        return -1;
    if (PQgetvalue(res, 0, 0)[0] == 't' && PQgetvalue(res, 0, 1)[0] != 't')
        msgs_add(m, "public.device_state: no unique index on (imei) (the upsert's ON CONFLICT "
                    "needs one)");
    PQclear(res);
    return 0;
}

static int check_functions(PGconn *conn, struct msgs *m, char *err, size_t err_cap)
{
    static const char sql[] =
        "SELECT p.oid IS NOT NULL, pg_catalog.pg_get_function_result(p.oid)"
        " FROM unnest($1::text[]) WITH ORDINALITY AS e(sig, ord)"
        " LEFT JOIN LATERAL (SELECT pg_catalog.to_regprocedure(e.sig)::oid AS oid) p ON true"
        " ORDER BY e.ord";
    const char *sigs[FNS_EXPECTED_LEN];
    for (size_t i = 0; i < FNS_EXPECTED_LEN; i++)
        sigs[i] = fns_expected[i].signature;
    char sigs_lit[1024];
    array_literal(sigs_lit, sizeof sigs_lit, sigs, FNS_EXPECTED_LEN);
    const char *params[1] = {sigs_lit};
    PGresult *res = query(conn, "schema check (functions)", sql, 1, params, err, err_cap);
    if (!res)
        return -1;
    for (int i = 0; i < PQntuples(res) && i < (int)FNS_EXPECTED_LEN; i++) {
        const struct fn_expect *e = &fns_expected[i];
        if (PQgetvalue(res, i, 0)[0] != 't') {
            msgs_add(m, "function %s: missing", e->signature);
            continue;
        }
        const char *found = PQgetvalue(res, i, 1);
        if (strcmp(found, e->result) != 0)
            msgs_add(m, "function %s: expected to return %s, found %s", e->signature, e->result,
                     found);
    }
    PQclear(res);
    return 0;
}

int pgschema_check(PGconn *conn, enum copyenc_layout layout, char *err, size_t err_cap)
{
    /* The problems go to a buffer of their own so a query failure can still use err. */
    char problems[4096];
    struct msgs m;
    msgs_init(&m, problems, sizeof problems);
    if (err_cap > 0)
        err[0] = '\0';

    if (check_columns(conn, layout, &m, err, err_cap) < 0 ||
        check_positions_shape(conn, layout, &m, err, err_cap) < 0 ||
        check_device_state_key(conn, &m, err, err_cap) < 0 ||
        check_functions(conn, &m, err, err_cap) < 0)
        return PGSCHEMA_E_FAIL;
    if (m.count == 0)
        return 0;
    if (err_cap > 0)
        snprintf(err, err_cap, "%s", problems);
    return PGSCHEMA_E_FAIL;
}

/* ---------------------------------------------------------------------------------------------
 * pgschema_apply
 * ------------------------------------------------------------------------------------------- */

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool is_sql_file(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && name[0] != '.' && strcmp(name + n - 4, ".sql") == 0;
}

/* Reads path into a NUL-terminated heap buffer; NULL with err set on failure. */
static char *read_sql(const char *path, char *err, size_t err_cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_cap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(PGSCHEMA_FILE_BYTES_MAX + 1);
    if (!text) {
        fclose(f);
        snprintf(err, err_cap, "%s: out of memory", path);
        return NULL;
    }
    size_t n = fread(text, 1, PGSCHEMA_FILE_BYTES_MAX + 1, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad || n > PGSCHEMA_FILE_BYTES_MAX) {
        snprintf(err, err_cap, "%s: %s", path,
                 bad ? "read error" : "larger than PGSCHEMA_FILE_BYTES_MAX");
        free(text);
        return NULL;
    }
    text[n] = '\0';
    if (memchr(text, '\0', n)) {
        snprintf(err, err_cap, "%s: NUL byte in an SQL file", path);
        free(text);
        return NULL;
    }
    return text;
}

/* The *.sql files of dir, sorted by name, into names (heap strings the caller frees, even
 * after a failure). Returns 0, or PGSCHEMA_E_FAIL with err set. */
static int list_sql_files(const char *dir, char *names[PGSCHEMA_FILES_MAX], size_t *names_len,
                          char *err, size_t err_cap)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, err_cap, "schema dir %s: %s", dir, strerror(errno));
        return PGSCHEMA_E_FAIL;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (!is_sql_file(de->d_name))
            continue;
        if (*names_len == PGSCHEMA_FILES_MAX) {
            snprintf(err, err_cap, "schema dir %s: more than %d .sql files", dir,
                     PGSCHEMA_FILES_MAX);
            rc = PGSCHEMA_E_FAIL;
        } else if ((names[*names_len] = strdup(de->d_name)) == NULL) {
            snprintf(err, err_cap, "schema dir %s: out of memory", dir);
            rc = PGSCHEMA_E_FAIL;
        } else {
            (*names_len)++;
        }
    }
    closedir(d);
    if (rc == 0 && *names_len == 0) {
        snprintf(err, err_cap, "schema dir %s: no .sql files", dir);
        rc = PGSCHEMA_E_FAIL;
    }
    if (rc == 0)
        qsort(names, *names_len, sizeof names[0], name_cmp);
    return rc;
}

/* NOTICEs ("already exists, skipping") are noise on every re-apply: raises the session's
 * client_min_messages to warning while the files run, saving the caller's value into saved
 * ("" if it could not be read) for notices_restore. (A notice receiver cannot be swapped and
 * restored: libpq does not return its arg.) */
static void notices_quiet(PGconn *conn, char *saved, size_t saved_cap)
{
    saved[0] = '\0';
    PGresult *lvl = PQexec(conn, "SELECT pg_catalog.current_setting('client_min_messages')");
    if (PQresultStatus(lvl) == PGRES_TUPLES_OK && PQntuples(lvl) == 1)
        snprintf(saved, saved_cap, "%s", PQgetvalue(lvl, 0, 0));
    PQclear(lvl);
    PQclear(PQexec(conn, "SET client_min_messages = warning"));
}

static void notices_restore(PGconn *conn, const char *saved)
{
    if (!saved[0])
        return;
    const char *params[1] = {saved};
    PQclear(PQexecParams(conn, "SELECT pg_catalog.set_config('client_min_messages', $1, false)", 1,
                         NULL, params, NULL, NULL, 0));
}

/* Runs one file as one query string. Returns 0, or PGSCHEMA_E_FAIL with err set; either way
 * the connection is left idle (a transaction the file left open is rolled back). */
static int apply_file(PGconn *conn, const char *dir, const char *name, char *err, size_t err_cap)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = read_sql(path, err, err_cap);
    if (!text)
        return PGSCHEMA_E_FAIL;
    PGresult *res = PQexec(conn, text);
    free(text);
    int rc = 0;
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        set_pg_error(err, err_cap, path, res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
        rc = PGSCHEMA_E_FAIL;
    }
    PQclear(res);
    /* A failed file leaves its BEGIN open and aborted; a file without COMMIT leaves it
     * open. Either way the connection goes back idle. */
    if (PQtransactionStatus(conn) == PQTRANS_INERROR ||
        PQtransactionStatus(conn) == PQTRANS_INTRANS) {
        PQclear(PQexec(conn, "ROLLBACK"));
        if (rc == 0) {
            snprintf(err, err_cap, "%s: leaves a transaction open (missing COMMIT)", path);
            rc = PGSCHEMA_E_FAIL;
        }
    }
    return rc;
}

int pgschema_apply(PGconn *conn, const char *dir, char *err, size_t err_cap)
{
    char *names[PGSCHEMA_FILES_MAX];
    size_t names_len = 0;
    if (err_cap > 0)
        err[0] = '\0';
    int rc = list_sql_files(dir, names, &names_len, err, err_cap);
    if (rc == 0) {
        char saved_level[64];
        notices_quiet(conn, saved_level, sizeof saved_level);
        for (size_t i = 0; i < names_len && rc >= 0; i++)
            rc = apply_file(conn, dir, names[i], err, err_cap) < 0 ? PGSCHEMA_E_FAIL : rc + 1;
        notices_restore(conn, saved_level);
    }
    for (size_t i = 0; i < names_len; i++)
        free(names[i]);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * pgschema_ensure_partitions
 * ------------------------------------------------------------------------------------------- */

int pgschema_ensure_partitions(PGconn *conn, int days_ahead, char *err, size_t err_cap)
{
    char days[16];
    snprintf(days, sizeof days, "%d", days_ahead);
    const char *params[1] = {days};
    if (err_cap > 0)
        err[0] = '\0';

    PGresult *res =
        PQexecParams(conn, "SELECT created, missing, detail FROM telemetry.ensure_partitions($1)",
                     1, NULL, params, NULL, NULL, 0);
    int rc;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        set_pg_error(err, err_cap, "telemetry.ensure_partitions",
                     res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
        rc = PGSCHEMA_E_FAIL;
    } else {
        int created = atoi(PQgetvalue(res, 0, 0));
        int missing = atoi(PQgetvalue(res, 0, 1));
        if (missing > 0) {
            snprintf(err, err_cap,
                     "telemetry.ensure_partitions: made %d, %d day(s) still without a partition "
                     "(their rows go to the default partition; retry later): %s",
                     created, missing, PQgetvalue(res, 0, 2));
            rc = PGSCHEMA_E_AGAIN;
        } else {
            rc = created;
        }
    }
    PQclear(res);
    return rc;
}
