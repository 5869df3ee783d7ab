/* test_pgsink.c — the PostgreSQL sink against a real server, driven by a poll() loop.
 *
 * Most cases run on the ctest fixture's server, each in a database of its own
 * (tests/support/pgtest.h) with a small table of its own, so that every failure can be made on
 * purpose: a CHECK constraint, a deferred constraint trigger that sleeps or fails at COMMIT, a
 * state function that sleeps, raises or fails with a data error. One case runs the real
 * schema with rows from the COPY encoder. The cases that stop or crash the server start a
 * private one with pgtmp.sh, so the fixture's server stays up for the other tests.
 *
 * Waits are bounded and wait for events (the sink's callbacks, or a condition polled on the
 * server while the sink keeps being driven); none is a bare sleep. The poll loop, the private
 * server and the socket that never answers are tests/support/linkdrive.h's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "codec/avl.h"
#include "gateway/copyenc.h"
#include "gateway/pgsink.h"
#include "loadgen/packetgen.h"
#include "tests/support/linkdrive.h"
#include "tests/support/pgtest.h"
#include "tests/support/testutil.h"

enum {
    DONE_MAX = 512,
    WAIT_MS = 20000, /* the bound of every wait: a failure, never a pass */
};

/* ---- side connections -------------------------------------------------------------------- */

static PGconn *side_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect %s: %s", conninfo, PQerrorMessage(c));
    pgtest_exec(c, "SET client_min_messages = warning");
    return c;
}

static long long side_ll(PGconn *c, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return pgtest_scalar_ll(c, sql);
}

/* ---- the table the sink writes in these tests ------------------------------------------- */

/* rows: a CHECK (v >= 0) for an immediate data error; v >= 900000 fires a deferred trigger
 * at COMMIT: 900000 sleeps there, 900001 fails with 23514. state_upsert(k, mode): 'ok',
 * 'raise' (P0001), 'data' (22003), 'sleep:<s>' then ok. */
static const char TEST_SCHEMA_SQL[] =
    "SET client_min_messages = warning;"
    "DROP SCHEMA IF EXISTS pgsink_test CASCADE;"
    "CREATE SCHEMA pgsink_test;"
    "CREATE TABLE pgsink_test.rows (batch int NOT NULL, n int NOT NULL,"
    "  v int NOT NULL CHECK (v >= 0), pad text);"
    "CREATE TABLE pgsink_test.state (k int PRIMARY KEY, batches int NOT NULL);"
    "CREATE FUNCTION pgsink_test.state_upsert(p_k int, p_mode text) RETURNS void"
    " LANGUAGE plpgsql AS $$ BEGIN"
    "  IF p_mode = 'raise' THEN RAISE EXCEPTION 'state refused' USING ERRCODE = 'P0001';"
    "  ELSIF p_mode = 'data' THEN RAISE EXCEPTION 'state out of range' USING ERRCODE = '22003';"
    "  ELSIF p_mode LIKE 'sleep:%' THEN PERFORM pg_sleep(substr(p_mode, 7)::float8);"
    "  END IF;"
    "  INSERT INTO pgsink_test.state AS s (k, batches) VALUES (p_k, 1)"
    "    ON CONFLICT (k) DO UPDATE SET batches = s.batches + 1;"
    " END $$;"
    "CREATE FUNCTION pgsink_test.at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    "  IF NEW.v = 900000 THEN PERFORM pg_sleep(60); END IF;"
    "  IF NEW.v = 900001 THEN"
    "    RAISE EXCEPTION 'deferred check failed' USING ERRCODE = '23514'; END IF;"
    "  RETURN NULL;"
    " END $$;"
    "CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON pgsink_test.rows"
    "  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.v >= 900000)"
    "  EXECUTE FUNCTION pgsink_test.at_commit();";

#define TEST_COPY_SQL  "COPY pgsink_test.rows (batch, n, v, pad) FROM STDIN (FORMAT binary)"
#define TEST_STATE_SQL "SELECT pgsink_test.state_upsert($1::int, $2::text)"

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void buf_put(struct buf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void buf_be16(struct buf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    buf_put(b, x, 2);
}

static void buf_be32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    buf_put(b, x, 4);
}

static void buf_int4(struct buf *b, int32_t v)
{
    buf_be32(b, 4);
    buf_be32(b, (uint32_t)v);
}

/* One batch for pgsink_test.rows, with the txn that sends it. */
struct batch {
    struct buf data;
    struct iovec iov[1024];
    char key[16];
    char mode[32];
    const char *params[2];
    struct pgsink_txn txn;
};

struct batch_spec {
    int batch;       /* the batch column, and the state key */
    int rows;        /* 0: 10 */
    int pad_bytes;   /* text per row */
    bool last_v_set; /* the last row's v is last_v (else n) */
    int last_v;
    bool last_short;  /* the last row has 3 fields instead of 4 */
    const char *mode; /* state_upsert mode; NULL: "ok" */
    bool no_state;    /* run no state statement */
    size_t iov_bytes; /* cut the stream into iovecs of this size; 0: one per part */
    uint32_t statement_timeout_ms, lock_timeout_ms; /* the txn's server timeouts */
};

static void batch_build(struct batch *b, const struct batch_spec *sp)
{
    memset(b, 0, sizeof(*b));
    int rows = sp->rows ? sp->rows : 10;
    static const uint8_t sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xFF, '\r', '\n', 0};
    buf_put(&b->data, sig, sizeof sig);
    buf_be32(&b->data, 0);
    buf_be32(&b->data, 0);
    char *pad = malloc((size_t)sp->pad_bytes + 1);
    assert_non_null(pad);
    for (int i = 0; i < sp->pad_bytes; i++)
        pad[i] = (char)('a' + (sp->batch + i) % 26);
    for (int n = 0; n < rows; n++) {
        bool last = n == rows - 1;
        buf_be16(&b->data, last && sp->last_short ? 3 : 4);
        buf_int4(&b->data, sp->batch);
        buf_int4(&b->data, n);
        buf_int4(&b->data, last && sp->last_v_set ? sp->last_v : n);
        if (last && sp->last_short)
            continue;
        buf_be32(&b->data, (uint32_t)sp->pad_bytes);
        buf_put(&b->data, pad, (size_t)sp->pad_bytes);
    }
    free(pad);
    buf_be16(&b->data, 0xFFFF);

    size_t cut = sp->iov_bytes ? sp->iov_bytes : b->data.len;
    int iovs = 0;
    for (size_t off = 0; off < b->data.len; off += cut) {
        assert_true(iovs < (int)(sizeof b->iov / sizeof b->iov[0]));
        size_t n = b->data.len - off < cut ? b->data.len - off : cut;
        b->iov[iovs].iov_base = b->data.p + off;
        b->iov[iovs].iov_len = n;
        iovs++;
    }
    snprintf(b->key, sizeof b->key, "%d", sp->batch);
    snprintf(b->mode, sizeof b->mode, "%s", sp->mode ? sp->mode : "ok");
    b->params[0] = b->key;
    b->params[1] = b->mode;
    b->txn.copy = b->iov;
    b->txn.copy_iovs = iovs;
    b->txn.state_params = sp->no_state ? NULL : b->params;
    b->txn.statement_timeout_ms = sp->statement_timeout_ms;
    b->txn.lock_timeout_ms = sp->lock_timeout_ms;
}

static void batch_free(struct batch *b)
{
    free(b->data.p);
    memset(b, 0, sizeof(*b));
}

/* ---- the harness: a sink, its callbacks recorded, a poll loop ----------------------------- */

struct done_txn {
    void *cookie;
    struct pgsink_txn_result r;
    char message[PGSINK_MESSAGE_BYTES];
};

struct done_query {
    void *cookie;
    int err;
    ExecStatusType status;
    char sqlstate[6];
    char value[64];
    int ntuples;
};

struct harness {
    struct pgsink *sink;
    struct linkdrive drive;
    struct done_txn txns[DONE_MAX];
    int txns_len;
    struct done_query queries[DONE_MAX];
    int queries_len;
    int ups[PGSINK_LINKS];
    int downs[PGSINK_LINKS];
    uint64_t down_ms[PGSINK_LINKS]; /* when the link last went down */
    /* a query a callback sends from inside on_query_done (re-entrancy) */
    bool chain_query;
};

static void on_txn_done(void *user, void *cookie, const struct pgsink_txn_result *r)
{
    struct harness *h = user;
    assert_true(h->txns_len < DONE_MAX);
    struct done_txn *d = &h->txns[h->txns_len++];
    d->cookie = cookie;
    d->r = *r;
    snprintf(d->message, sizeof d->message, "%s", r->message);
    d->r.message = d->message;
}

static void on_query_done(void *user, void *cookie, const PGresult *res, int err)
{
    struct harness *h = user;
    assert_true(h->queries_len < DONE_MAX);
    struct done_query *d = &h->queries[h->queries_len++];
    memset(d, 0, sizeof(*d));
    d->cookie = cookie;
    d->err = err;
    if (res) {
        assert_int_equal(err, 0);
        d->status = PQresultStatus(res);
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        snprintf(d->sqlstate, sizeof d->sqlstate, "%s", st ? st : "");
        d->ntuples = PQntuples(res);
        if (d->status == PGRES_TUPLES_OK && PQntuples(res) > 0 && PQnfields(res) > 0)
            snprintf(d->value, sizeof d->value, "%s", PQgetvalue(res, 0, 0));
    } else {
        assert_true(err < 0);
    }
    if (h->chain_query) {
        h->chain_query = false;
        assert_int_equal(
            pgsink_query(h->sink, "SELECT 'chained'", 0, NULL, (void *)77, tu_now_ms()), 0);
    }
}

static void on_state(void *user, enum pgsink_link link, bool connected)
{
    struct harness *h = user;
    if (connected) {
        h->ups[link]++;
    } else {
        h->downs[link]++;
        h->down_ms[link] = tu_now_ms();
    }
}

static void harness_config(struct harness *h, struct pgsink_config *cfg, const char *conninfo)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->conninfo = conninfo;
    cfg->copy_sql = TEST_COPY_SQL;
    cfg->state_sql = TEST_STATE_SQL;
    cfg->state_nparams = 2;
    cfg->backoff_min_ms = 20;
    cfg->backoff_max_ms = 200;
    cfg->queries_max = 8;
    cfg->seed = 42;
    cfg->cb.on_txn_done = on_txn_done;
    cfg->cb.on_query_done = on_query_done;
    cfg->cb.on_state = on_state;
    cfg->user = h;
}

/* ---- the poll loop (linkdrive) over the sink's two sockets, data and control -------------- */

static int drive_fd(const void *sink, int i)
{
    return pgsink_fd(sink, (enum pgsink_link)i);
}

static short drive_events(const void *sink, int i)
{
    return pgsink_events(sink, (enum pgsink_link)i);
}

static uint64_t drive_deadline(const void *sink)
{
    return pgsink_next_deadline_ms(sink);
}

static void drive_on_io(void *sink, int i, short revents, uint64_t now)
{
    pgsink_on_io(sink, (enum pgsink_link)i, revents, now);
}

static void drive_tick(void *sink, uint64_t now)
{
    pgsink_tick(sink, now);
}

static const struct linkdrive_ops drive_ops = {
    .sockets = PGSINK_LINKS,
    .fd = drive_fd,
    .events = drive_events,
    .next_deadline_ms = drive_deadline,
    .on_io = drive_on_io,
    .tick = drive_tick,
};

static void harness_start(struct harness *h, const struct pgsink_config *cfg)
{
    memset(h, 0, sizeof(*h));
    char err[256] = "";
    h->sink = pgsink_create(cfg, err, sizeof err);
    if (h->sink == NULL)
        fail_msg("pgsink_create: %s", err);
    h->drive = (struct linkdrive){.ops = &drive_ops, .link = h->sink};
}

static void harness_stop(struct harness *h)
{
    pgsink_destroy(h->sink);
    h->sink = NULL;
}

/* Drives the sink until done(h, arg) or timeout_ms (linkdrive_pump). */
static bool pump(struct harness *h, linkdrive_until_fn *done, long arg, int timeout_ms)
{
    return linkdrive_pump(&h->drive, done, h, arg, timeout_ms);
}

static bool until_ready(void *p, long arg)
{
    const struct harness *h = p;
    (void)arg;
    return pgsink_ready(h->sink) && pgsink_phase(h->sink, PGSINK_LINK_CONTROL) >= PGSINK_PHASE_IDLE;
}

static bool until_txns(void *p, long n)
{
    const struct harness *h = p;
    return h->txns_len >= n;
}

static bool until_queries(void *p, long n)
{
    const struct harness *h = p;
    return h->queries_len >= n;
}

static bool until_ups(void *p, long n)
{
    const struct harness *h = p;
    return h->ups[PGSINK_LINK_DATA] >= n;
}

static bool until_control_ups(void *p, long n)
{
    const struct harness *h = p;
    return h->ups[PGSINK_LINK_CONTROL] >= n;
}

static bool until_downs(void *p, long n)
{
    const struct harness *h = p;
    return h->downs[PGSINK_LINK_DATA] >= n;
}

static bool until_copy_bytes(void *p, long n)
{
    const struct harness *h = p;
    return h->txns_len > 0 || (pgsink_phase(h->sink, PGSINK_LINK_DATA) == PGSINK_PHASE_COPY &&
                               pgsink_counters(h->sink)->copy_bytes >= (uint64_t)n);
}

static bool until_connect_failures(void *p, long n)
{
    const struct harness *h = p;
    return pgsink_counters(h->sink)->connect_failures >= (uint64_t)n;
}

/* Drives the sink until the server shows backend pid waiting in pg_sleep. */
static void pump_until_sleeping(struct harness *h, PGconn *side, int pid)
{
    uint64_t end = tu_now_ms() + WAIT_MS;
    while (tu_now_ms() < end) {
        if (side_ll(side,
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND wait_event = "
                    "'PgSleep'",
                    pid) == 1)
            return;
        pump(h, NULL, 0, 20);
        assert_int_equal(h->txns_len, 0);
    }
    fail_msg("backend %d never reached pg_sleep", pid);
}

static void submit_ok(struct harness *h, struct batch *b, void *cookie)
{
    int rc = pgsink_submit(h->sink, &b->txn, cookie, tu_now_ms());
    if (rc != 0)
        fail_msg("pgsink_submit: %d (%s)", rc, pgsink_last_error(h->sink, PGSINK_LINK_DATA));
}

/* Submits one batch and waits for its outcome. */
static const struct done_txn *run_batch(struct harness *h, const struct batch_spec *sp)
{
    struct batch b;
    batch_build(&b, sp);
    int before = h->txns_len;
    submit_ok(h, &b, (void *)(intptr_t)sp->batch);
    assert_true(pump(h, until_txns, before + 1, WAIT_MS));
    batch_free(&b);
    const struct done_txn *d = &h->txns[before];
    assert_ptr_equal(d->cookie, (void *)(intptr_t)sp->batch);
    return d;
}

static void expect_outcome(const struct done_txn *d, enum pgsink_outcome o, const char *sqlstate)
{
    if (d->r.outcome != o || strcmp(d->r.sqlstate, sqlstate) != 0)
        fail_msg("outcome %s sqlstate '%s' (%s), expected %s '%s'",
                 pgsink_outcome_name(d->r.outcome), d->r.sqlstate, d->message,
                 pgsink_outcome_name(o), sqlstate);
}

/* ---- fixture-server cases ----------------------------------------------------------------- */

struct fx {
    struct pgtest_db db;
    struct harness h;
    struct pgsink_config cfg;
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    pgtest_db_create(&f->db, "pgsink", false);
    pgtest_exec(f->db.conn, TEST_SCHEMA_SQL);
    harness_config(&f->h, &f->cfg, f->db.conninfo);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    if (f->h.sink)
        harness_stop(&f->h);
    pgtest_db_drop(&f->db);
    free(f);
    return 0;
}

static void fx_start(struct fx *f)
{
    harness_start(&f->h, &f->cfg);
    assert_true(pump(&f->h, until_ready, 0, WAIT_MS));
    assert_int_equal(f->h.ups[PGSINK_LINK_DATA], 1);
    assert_int_equal(f->h.ups[PGSINK_LINK_CONTROL], 1);
}

static long long rows_of(struct fx *f, int batch)
{
    return side_ll(f->db.conn, "SELECT count(*) FROM pgsink_test.rows WHERE batch = %d", batch);
}

/* Many transactions back to back: every one commits, the rows and the state are all there,
 * the counters are exact. */
static void test_commit_many(void **state)
{
    struct fx *f = *state;
    fx_start(f);
    assert_int_equal(pgsink_submit(f->h.sink, NULL, NULL, tu_now_ms()), -EINVAL);
    enum { TXNS = 200, ROWS = 37 };
    uint64_t bytes = 0;
    for (int i = 1; i <= TXNS; i++) {
        struct batch b;
        struct batch_spec sp = {.batch = i,
                                .rows = ROWS,
                                .pad_bytes = i % 50,
                                .iov_bytes = (size_t)(7 + (i % 13) * 61)};
        batch_build(&b, &sp);
        bytes += b.data.len;
        submit_ok(&f->h, &b, (void *)(intptr_t)i);
        /* One at a time. */
        assert_int_equal(pgsink_submit(f->h.sink, &b.txn, NULL, tu_now_ms()), -EBUSY);
        assert_false(pgsink_ready(f->h.sink));
        assert_true(pump(&f->h, until_txns, i, WAIT_MS));
        batch_free(&b);
        const struct done_txn *d = &f->h.txns[i - 1];
        assert_ptr_equal(d->cookie, (void *)(intptr_t)i);
        expect_outcome(d, PGSINK_COMMITTED, "");
        assert_int_equal(d->r.copy_rows, ROWS);
        assert_int_equal(d->r.backend_pid, pgsink_backend_pid(f->h.sink, PGSINK_LINK_DATA));
    }
    assert_int_equal(f->h.txns_len, TXNS);
    assert_int_equal(side_ll(f->db.conn, "SELECT count(*) FROM pgsink_test.rows"), TXNS * ROWS);
    assert_int_equal(side_ll(f->db.conn, "SELECT count(DISTINCT (batch, n)) FROM pgsink_test.rows"),
                     TXNS * ROWS);
    assert_int_equal(side_ll(f->db.conn, "SELECT count(*) FROM pgsink_test.state"), TXNS);
    assert_int_equal(side_ll(f->db.conn, "SELECT sum(batches) FROM pgsink_test.state"), TXNS);
    const struct pgsink_counters *c = pgsink_counters(f->h.sink);
    assert_int_equal(c->txns_submitted, TXNS);
    assert_int_equal(c->txns_committed, TXNS);
    assert_int_equal(c->txns_not_committed + c->txns_unknown + c->txns_data_error, 0);
    assert_int_equal(c->copy_rows, TXNS * ROWS);
    assert_int_equal(c->copy_bytes, bytes);
    assert_int_equal(c->connects, 1);
    assert_int_equal(c->disconnects, 0);
    assert_int_equal(c->rollbacks, 0);
}

/* Several MB per transaction: more than the socket takes at once, so the sink must wait for
 * POLLOUT and resume where it stopped, also in the middle of an iovec. */
static void test_large_copy(void **state)
{
    struct fx *f = *state;
    f->cfg.copy_bytes_per_io = 300 * 1000; /* also yields to the loop between socket waits */
    fx_start(f);
    /* Loopback buffers take megabytes and the server drains them fast: a small send buffer
     * makes the socket refuse part of every chunk, so the wait-for-POLLOUT path runs for sure. */
    int sndbuf = 16 * 1024;
    assert_int_equal(setsockopt(pgsink_fd(f->h.sink, PGSINK_LINK_DATA), SOL_SOCKET, SO_SNDBUF,
                                &sndbuf, sizeof sndbuf),
                     0);
    enum { TXNS = 3, ROWS = 6000, PAD = 1400 }; /* about 8.5 MB each */
    uint64_t bytes = 0;
    for (int i = 1; i <= TXNS; i++) {
        struct batch b;
        /* one 4 MB iovec and odd-sized ones: chunks cross iovec borders */
        struct batch_spec sp = {
            .batch = i, .rows = ROWS, .pad_bytes = PAD, .iov_bytes = i == 1 ? 4u << 20 : 333331};
        batch_build(&b, &sp);
        assert_true(b.data.len > 8u << 20);
        bytes += b.data.len;
        submit_ok(&f->h, &b, (void *)(intptr_t)i);
        assert_true(pump(&f->h, until_txns, i, WAIT_MS));
        batch_free(&b);
        expect_outcome(&f->h.txns[i - 1], PGSINK_COMMITTED, "");
        assert_int_equal(f->h.txns[i - 1].r.copy_rows, ROWS);
    }
    const struct pgsink_counters *c = pgsink_counters(f->h.sink);
    assert_int_equal(c->copy_bytes, bytes);
    assert_true(c->write_waits > 0); /* the non-blocking flush path ran */
    assert_int_equal(side_ll(f->db.conn, "SELECT count(*) FROM pgsink_test.rows"), TXNS * ROWS);
    assert_int_equal(side_ll(f->db.conn, "SELECT sum(length(pad)) FROM pgsink_test.rows"),
                     (long long)TXNS * ROWS * PAD);
    assert_int_equal(c->disconnects, 0);
}

/* Rejections by the server: data errors (22/23) from the COPY, the state statement and a
 * deferred constraint at COMMIT; other errors; each leaves the session idle and the next
 * transaction commits. Nothing of a failed transaction remains, state included. */
static void test_errors(void **state)
{
    struct fx *f = *state;
    fx_start(f);
    const struct done_txn *d;

    d = run_batch(&f->h, &(struct batch_spec){.batch = 1, .last_v_set = true, .last_v = -1});
    expect_outcome(d, PGSINK_DATA_ERROR, "23514"); /* CHECK (v >= 0) */
    assert_int_equal(d->r.copy_rows, -1);

    d = run_batch(&f->h, &(struct batch_spec){
                             .batch = 2, .rows = 3000, .pad_bytes = 500, .last_short = true});
    expect_outcome(d, PGSINK_DATA_ERROR, "22P04"); /* row field count is 3, expected 4 */

    d = run_batch(&f->h, &(struct batch_spec){.batch = 3, .mode = "data"});
    expect_outcome(d, PGSINK_DATA_ERROR, "22003"); /* the state statement, after the COPY */
    assert_int_equal(d->r.copy_rows, 10);

    d = run_batch(&f->h, &(struct batch_spec){.batch = 4, .mode = "raise"});
    expect_outcome(d, PGSINK_NOT_COMMITTED, "P0001");

    d = run_batch(&f->h, &(struct batch_spec){.batch = 5, .last_v_set = true, .last_v = 900001});
    expect_outcome(d, PGSINK_DATA_ERROR, "23514"); /* deferred: raised by COMMIT itself */

    d = run_batch(&f->h, &(struct batch_spec){.batch = 6, .no_state = true});
    expect_outcome(d, PGSINK_COMMITTED, "");

    d = run_batch(&f->h, &(struct batch_spec){.batch = 7});
    expect_outcome(d, PGSINK_COMMITTED, "");

    for (int b = 1; b <= 5; b++)
        assert_int_equal(rows_of(f, b), 0);
    assert_int_equal(rows_of(f, 6), 10);
    assert_int_equal(rows_of(f, 7), 10);
    /* the state of failed transactions was rolled back with their rows */
    assert_int_equal(side_ll(f->db.conn, "SELECT count(*) FROM pgsink_test.state"), 1);
    assert_int_equal(side_ll(f->db.conn, "SELECT k FROM pgsink_test.state"), 7);
    const struct pgsink_counters *c = pgsink_counters(f->h.sink);
    assert_int_equal(c->txns_data_error, 4);
    assert_int_equal(c->txns_not_committed, 1);
    assert_int_equal(c->txns_committed, 2);
    assert_int_equal(c->connects, 1);
    assert_int_equal(c->disconnects, 0);
    /* the COPY failures end the simple query inside the open transaction block; the state
     * statement's failures leave the pipeline's transaction aborted: ROLLBACK each time. The
     * failed COMMIT ended its transaction itself. */
    assert_int_equal(c->rollbacks, 4);
}

/* A COPY statement the server refuses (a missing table): NOT_COMMITTED with its SQLSTATE. */
static void test_bad_copy_statement(void **state)
{
    struct fx *f = *state;
    f->cfg.copy_sql = "COPY pgsink_test.nosuchtable FROM STDIN (FORMAT binary)";
    fx_start(f);
    const struct done_txn *d = run_batch(&f->h, &(struct batch_spec){.batch = 1});
    expect_outcome(d, PGSINK_NOT_COMMITTED, "42P01");
    assert_true(pgsink_ready(f->h.sink));
    assert_int_equal(pgsink_counters(f->h.sink)->rollbacks, 1);
}

/* The link broken in the middle of the COPY data: certainly not committed; the sink
 * reconnects and the next transaction commits. */
static void test_break_mid_copy(void **state)
{
    struct fx *f = *state;
    f->cfg.copy_bytes_per_io = 64 * 1024;
    fx_start(f);
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 1, .rows = 20000, .pad_bytes = 1000});
    int pid = pgsink_backend_pid(f->h.sink, PGSINK_LINK_DATA);
    uint32_t epoch = pgsink_fd_epoch(f->h.sink, PGSINK_LINK_DATA);
    submit_ok(&f->h, &b, (void *)1);
    assert_true(pump(&f->h, until_copy_bytes, 1 << 20, WAIT_MS));
    assert_int_equal(f->h.txns_len, 0);
    assert_int_equal(pgsink_phase(f->h.sink, PGSINK_LINK_DATA), PGSINK_PHASE_COPY);
    /* waits until the backend is gone */
    assert_int_equal(side_ll(f->db.conn, "SELECT pg_terminate_backend(%d, 10000)::int", pid), 1);
    assert_true(pump(&f->h, until_txns, 1, WAIT_MS));
    expect_outcome(&f->h.txns[0], PGSINK_NOT_COMMITTED, "");
    assert_true(pgsink_counters(f->h.sink)->copy_bytes < b.data.len);
    assert_int_equal(f->h.downs[PGSINK_LINK_DATA], 1);
    assert_int_equal(pgsink_submit(f->h.sink, &b.txn, NULL, tu_now_ms()), -ENOTCONN);
    batch_free(&b);

    assert_true(pump(&f->h, until_ups, 2, WAIT_MS));
    assert_int_not_equal(pgsink_backend_pid(f->h.sink, PGSINK_LINK_DATA), pid);
    assert_int_not_equal(pgsink_fd_epoch(f->h.sink, PGSINK_LINK_DATA), epoch);
    const struct done_txn *d = run_batch(&f->h, &(struct batch_spec){.batch = 2});
    expect_outcome(d, PGSINK_COMMITTED, "");
    assert_int_equal(rows_of(f, 1), 0);
    assert_int_equal(rows_of(f, 2), 10);
    const struct pgsink_counters *c = pgsink_counters(f->h.sink);
    assert_int_equal(c->connects, 2);
    assert_int_equal(c->disconnects, 1);
    assert_int_equal(c->txns_not_committed, 1);
    /* the control link was not touched */
    assert_int_equal(c->control_connects, 1);
    assert_int_equal(c->control_disconnects, 0);
}

/* The backend ended while the state statement runs, COMMIT queued behind it in the pipeline:
 * the FATAL (57P01) arrives as the state statement's result, so the server proves that COMMIT
 * never ran. NOT_COMMITTED, and indeed nothing is there. */
static void test_terminated_before_commit_ran(void **state)
{
    struct fx *f = *state;
    fx_start(f);
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 1, .mode = "sleep:60"});
    int pid = pgsink_backend_pid(f->h.sink, PGSINK_LINK_DATA);
    submit_ok(&f->h, &b, (void *)1);
    pump_until_sleeping(&f->h, f->db.conn, pid);
    assert_int_equal(pgsink_phase(f->h.sink, PGSINK_LINK_DATA), PGSINK_PHASE_PIPELINE);
    assert_int_equal(side_ll(f->db.conn, "SELECT pg_terminate_backend(%d, 10000)::int", pid), 1);
    assert_true(pump(&f->h, until_txns, 1, WAIT_MS));
    batch_free(&b);
    expect_outcome(&f->h.txns[0], PGSINK_NOT_COMMITTED, "57P01");
    assert_int_equal(rows_of(f, 1), 0);
    assert_int_equal(pgsink_counters(f->h.sink)->disconnects, 1);
    assert_true(pump(&f->h, until_ups, 2, WAIT_MS));
    expect_outcome(run_batch(&f->h, &(struct batch_spec){.batch = 2}), PGSINK_COMMITTED, "");
}

/* The backend ended while COMMIT itself runs (a deferred trigger sleeps in it): FATAL on
 * COMMIT is UNKNOWN — the session ended where the commit record may already exist. */
static void test_terminated_during_commit(void **state)
{
    struct fx *f = *state;
    fx_start(f);
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 1, .last_v_set = true, .last_v = 900000});
    int pid = pgsink_backend_pid(f->h.sink, PGSINK_LINK_DATA);
    submit_ok(&f->h, &b, (void *)1);
    pump_until_sleeping(&f->h, f->db.conn, pid);
    assert_int_equal(side_ll(f->db.conn, "SELECT pg_terminate_backend(%d, 10000)::int", pid), 1);
    assert_true(pump(&f->h, until_txns, 1, WAIT_MS));
    batch_free(&b);
    expect_outcome(&f->h.txns[0], PGSINK_UNKNOWN, "57P01");
    assert_int_equal(f->h.txns[0].r.backend_pid, pid);
    assert_int_equal(pgsink_counters(f->h.sink)->txns_unknown, 1);
    assert_true(pump(&f->h, until_ups, 2, WAIT_MS));
    expect_outcome(run_batch(&f->h, &(struct batch_spec){.batch = 2}), PGSINK_COMMITTED, "");
}

/* A transaction timeout after COMMIT was queued: UNKNOWN. And that is the truth: the backend
 * has not noticed the dropped link, finishes the state statement, and runs the COMMIT it had
 * already received — the rows appear after the sink gave up. */
static void test_timeout_after_commit_queued(void **state)
{
    struct fx *f = *state;
    f->cfg.txn_timeout_ms = 300;
    fx_start(f);
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 1, .mode = "sleep:1.5"});
    submit_ok(&f->h, &b, (void *)1);
    assert_true(pump(&f->h, until_txns, 1, WAIT_MS));
    expect_outcome(&f->h.txns[0], PGSINK_UNKNOWN, "");
    const struct pgsink_counters *c = pgsink_counters(f->h.sink);
    assert_int_equal(c->txn_timeouts, 1);
    assert_int_equal(c->disconnects, 1);
    /* the orphaned transaction commits on its own */
    uint64_t end = tu_now_ms() + WAIT_MS;
    while (rows_of(f, 1) == 0 && tu_now_ms() < end)
        pump(&f->h, NULL, 0, 50);
    assert_int_equal(rows_of(f, 1), 10);
    batch_free(&b);
    assert_true(pump(&f->h, until_ups, 2, WAIT_MS));
    expect_outcome(run_batch(&f->h, &(struct batch_spec){.batch = 2}), PGSINK_COMMITTED, "");
}

/* The server's timeouts of a transaction (SET LOCAL in its first query): a state statement that
 * waits for a row lock another session holds is cancelled by statement_timeout (57014) or
 * lock_timeout (55P03): NOT_COMMITTED with timed_out, rolled back, the link kept. The settings
 * end with their transaction (a later one without them waits as long as it takes), a
 * statement that runs slow is cancelled too, and other errors are not timeouts. */
static void test_server_timeouts(void **state)
{
    struct fx *f = *state;
    fx_start(f);
    const struct done_txn *d;
    expect_outcome(run_batch(&f->h, &(struct batch_spec){.batch = 1}), PGSINK_COMMITTED, "");
    PGconn *side = side_connect(f->db.conninfo);
    pgtest_exec(side, "BEGIN");
    PQclear(pgtest_query(side, "SELECT k FROM pgsink_test.state WHERE k = 1 FOR UPDATE"));

    uint64_t t0 = tu_now_ms();
    d = run_batch(&f->h, &(struct batch_spec){.batch = 1, .statement_timeout_ms = 300});
    uint64_t waited = tu_now_ms() - t0;
    expect_outcome(d, PGSINK_NOT_COMMITTED, "57014");
    assert_true(d->r.timed_out);
    assert_true(waited >= 300 && waited < WAIT_MS);
    d = run_batch(&f->h, &(struct batch_spec){
                             .batch = 1, .statement_timeout_ms = 5000, .lock_timeout_ms = 100});
    expect_outcome(d, PGSINK_NOT_COMMITTED, "55P03");
    assert_true(d->r.timed_out);
    /* another key is not locked: the same timeouts let it commit */
    d = run_batch(&f->h, &(struct batch_spec){
                             .batch = 2, .statement_timeout_ms = 300, .lock_timeout_ms = 100});
    expect_outcome(d, PGSINK_COMMITTED, "");
    assert_false(d->r.timed_out);
    pgtest_exec(side, "COMMIT");
    PQfinish(side);

    /* slow, not blocked: cancelled as well */
    d = run_batch(&f->h,
                  &(struct batch_spec){.batch = 3, .mode = "sleep:1", .statement_timeout_ms = 200});
    expect_outcome(d, PGSINK_NOT_COMMITTED, "57014");
    assert_true(d->r.timed_out);
    /* SET LOCAL ended with its transaction: without timeouts the same sleep commits */
    d = run_batch(&f->h, &(struct batch_spec){.batch = 4, .mode = "sleep:0.5"});
    expect_outcome(d, PGSINK_COMMITTED, "");
    d = run_batch(&f->h, &(struct batch_spec){.batch = 5, .mode = "raise"});
    expect_outcome(d, PGSINK_NOT_COMMITTED, "P0001");
    assert_false(d->r.timed_out);

    assert_int_equal(rows_of(f, 1), 10); /* the first batch only */
    assert_int_equal(rows_of(f, 2), 10);
    assert_int_equal(rows_of(f, 3), 0);
    assert_int_equal(rows_of(f, 4), 10);
    assert_int_equal(side_ll(f->db.conn, "SELECT batches FROM pgsink_test.state WHERE k = 1"), 1);
    const struct pgsink_counters *c = pgsink_counters(f->h.sink);
    assert_int_equal(c->txns_timed_out, 3);
    assert_int_equal(c->txns_not_committed, 4);
    assert_int_equal(c->txn_timeouts, 0); /* the client-side one never ran out */
    assert_int_equal(c->disconnects, 0);
}

/* Look-ups on the control link: parameters, order, errors that do not abort the next query,
 * the bound, a query sent from inside a callback, answers while the data link is busy, a lost
 * query when the control backend ends, reconnect. */
static void test_control_queries(void **state)
{
    struct fx *f = *state;
    f->cfg.queries_max = 4;
    harness_start(&f->h, &f->cfg);
    assert_int_equal(pgsink_query(f->h.sink, "SELECT 1", 0, NULL, NULL, tu_now_ms()), -ENOTCONN);
    assert_true(pump(&f->h, until_ready, 0, WAIT_MS));
    struct harness *h = &f->h;
    uint64_t t = tu_now_ms();

    const char *p1[] = {"41", "1"};
    const char *p2[] = {NULL};
    assert_int_equal(pgsink_query(h->sink, "SELECT $1::int + $2::int", 2, p1, (void *)1, t), 0);
    assert_int_equal(pgsink_query(h->sink, "SELECT 1 / 0", 0, NULL, (void *)2, t), 0);
    assert_int_equal(pgsink_query(h->sink, "SELECT coalesce($1, 'null')", 1, p2, (void *)3, t), 0);
    assert_int_equal(
        pgsink_query(h->sink, "SELECT k FROM pgsink_test.state", 0, NULL, (void *)4, t), 0);
    assert_int_equal(pgsink_query(h->sink, "SELECT 5", 0, NULL, (void *)5, t), -ENOBUFS);
    assert_int_equal(pgsink_query(h->sink, "SELECT 5", -1, NULL, (void *)5, t), -EINVAL);
    assert_true(pump(h, until_queries, 4, WAIT_MS));
    assert_ptr_equal(h->queries[0].cookie, (void *)1);
    assert_int_equal(h->queries[0].status, PGRES_TUPLES_OK);
    assert_string_equal(h->queries[0].value, "42");
    assert_ptr_equal(h->queries[1].cookie, (void *)2);
    assert_int_equal(h->queries[1].status, PGRES_FATAL_ERROR);
    assert_string_equal(h->queries[1].sqlstate, "22012");
    assert_ptr_equal(h->queries[2].cookie, (void *)3);
    assert_string_equal(h->queries[2].value, "null");
    assert_ptr_equal(h->queries[3].cookie, (void *)4);
    assert_int_equal(h->queries[3].status, PGRES_TUPLES_OK);
    assert_int_equal(h->queries[3].ntuples, 0);

    /* a callback that sends the next query at once */
    h->chain_query = true;
    assert_int_equal(pgsink_query(h->sink, "SELECT 6", 0, NULL, (void *)6, tu_now_ms()), 0);
    assert_true(pump(h, until_queries, 6, WAIT_MS));
    assert_string_equal(h->queries[4].value, "6");
    assert_ptr_equal(h->queries[5].cookie, (void *)77);
    assert_string_equal(h->queries[5].value, "chained");

    /* the data link busy in a slow transaction does not delay a look-up */
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 1, .mode = "sleep:60"});
    int data_pid = pgsink_backend_pid(h->sink, PGSINK_LINK_DATA);
    submit_ok(h, &b, (void *)1);
    pump_until_sleeping(h, f->db.conn, data_pid);
    assert_int_equal(pgsink_query(h->sink, "SELECT 7", 0, NULL, (void *)7, tu_now_ms()), 0);
    assert_true(pump(h, until_queries, 7, WAIT_MS));
    assert_string_equal(h->queries[6].value, "7");
    assert_int_equal(h->txns_len, 0);

    /* the control backend ended under a running query: that query is lost, the next link
     * serves again */
    int ctl_pid = pgsink_backend_pid(h->sink, PGSINK_LINK_CONTROL);
    assert_int_equal(pgsink_query(h->sink, "SELECT pg_sleep(60)", 0, NULL, (void *)8, tu_now_ms()),
                     0);
    assert_int_equal(pgsink_query(h->sink, "SELECT 9", 0, NULL, (void *)9, tu_now_ms()), 0);
    pump_until_sleeping(h, f->db.conn, ctl_pid);
    assert_int_equal(side_ll(f->db.conn, "SELECT pg_terminate_backend(%d, 10000)::int", ctl_pid),
                     1);
    assert_true(pump(h, until_queries, 9, WAIT_MS));
    /* The FATAL is the sleeping query's answer; the query behind it gets none. */
    assert_ptr_equal(h->queries[7].cookie, (void *)8);
    assert_int_equal(h->queries[7].err, 0);
    assert_string_equal(h->queries[7].sqlstate, "57P01");
    assert_ptr_equal(h->queries[8].cookie, (void *)9);
    assert_int_equal(h->queries[8].err, -ECONNRESET);
    assert_int_equal(h->downs[PGSINK_LINK_CONTROL], 1);
    assert_int_equal(pgsink_query(h->sink, "SELECT 1", 0, NULL, NULL, tu_now_ms()), -ENOTCONN);
    assert_int_equal(h->txns_len, 0); /* the data link is on its own */

    uint64_t end = tu_now_ms() + WAIT_MS;
    while (h->ups[PGSINK_LINK_CONTROL] < 2 && tu_now_ms() < end)
        pump(h, NULL, 0, 20);
    assert_int_equal(h->ups[PGSINK_LINK_CONTROL], 2);
    assert_int_equal(pgsink_query(h->sink, "SELECT 10", 0, NULL, (void *)10, tu_now_ms()), 0);
    assert_true(pump(h, until_queries, 10, WAIT_MS));
    assert_string_equal(h->queries[9].value, "10");

    const struct pgsink_counters *c = pgsink_counters(h->sink);
    assert_int_equal(c->queries_submitted, 10);
    assert_int_equal(c->queries_answered, 9);
    assert_int_equal(c->queries_failed, 2);
    assert_int_equal(c->queries_lost, 1);
    assert_int_equal(c->control_connects, 2);
    assert_int_equal(c->control_disconnects, 1);

    /* end the slow transaction: destroy reports it (COMMIT was queued: UNKNOWN) */
    harness_stop(h);
    assert_int_equal(h->txns_len, 1);
    expect_outcome(&h->txns[0], PGSINK_UNKNOWN, "");
    batch_free(&b);
}

/* A control query without an answer within query_timeout_ms: -ETIMEDOUT, the link is
 * dropped and comes back. */
static void test_query_timeout(void **state)
{
    struct fx *f = *state;
    f->cfg.query_timeout_ms = 200;
    fx_start(f);
    struct harness *h = &f->h;
    assert_int_equal(pgsink_query(h->sink, "SELECT pg_sleep(30)", 0, NULL, (void *)1, tu_now_ms()),
                     0);
    assert_int_equal(pgsink_query(h->sink, "SELECT 2", 0, NULL, (void *)2, tu_now_ms()), 0);
    assert_true(pump(h, until_queries, 2, WAIT_MS));
    assert_int_equal(h->queries[0].err, -ETIMEDOUT);
    assert_int_equal(h->queries[1].err, -ECONNRESET);
    uint64_t end = tu_now_ms() + WAIT_MS;
    while (h->ups[PGSINK_LINK_CONTROL] < 2 && tu_now_ms() < end)
        pump(h, NULL, 0, 20);
    assert_int_equal(pgsink_query(h->sink, "SELECT 3", 0, NULL, (void *)3, tu_now_ms()), 0);
    assert_true(pump(h, until_queries, 3, WAIT_MS));
    assert_string_equal(h->queries[2].value, "3");
    assert_int_equal(h->downs[PGSINK_LINK_DATA], 0);
}

/* Destroy with a transaction before COMMIT: NOT_COMMITTED from inside pgsink_destroy. */
static void test_destroy_in_flight(void **state)
{
    struct fx *f = *state;
    fx_start(f);
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 1});
    submit_ok(&f->h, &b, (void *)1);
    harness_stop(&f->h);
    assert_int_equal(f->h.txns_len, 1);
    expect_outcome(&f->h.txns[0], PGSINK_NOT_COMMITTED, "");
    batch_free(&b);
}

/* The real schema: rows of generated packets encoded by copyenc, the default statements
 * (telemetry.positions, telemetry.device_state_upsert_owned with each device's owner token). */
static void test_real_schema(void **state)
{
    (void)state;
    struct pgtest_db db;
    pgtest_db_create(&db, "pgsink_schema", true);
    struct harness h;
    struct pgsink_config cfg;
    harness_config(&h, &cfg, db.conninfo);
    cfg.copy_sql = NULL;
    cfg.state_sql = NULL;
    cfg.state_nparams = 0;
    harness_start(&h, &cfg);
    assert_true(pump(&h, until_ready, 0, WAIT_MS));

    static struct pktgen_packet pkt;
    static uint8_t frame[PKTGEN_FRAME_BYTES_MAX];
    static struct avl_record recs[AVL_RECORDS_MAX];
    static const uint8_t codecs[] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    enum { DEVICES = 3, PACKETS = 20 };
    struct buf data = {0};
    uint8_t hdr[COPYENC_HEADER_BYTES], trl[COPYENC_TRAILER_BYTES];
    buf_put(&data, hdr, (size_t)copyenc_header(hdr));
    long long rows = 0;
    char imeis[256] = "{", last_ts[256] = "{", rx[256] = "{", lon[256] = "{", lat[256] = "{",
         dedup[256] = "{", owners[256] = "{";
    int64_t received_us = 1767225600000000; /* 2026-01-01 */
    for (int d = 0; d < DEVICES; d++) {
        struct pktgen g;
        pktgen_init(&g, 1000 + (uint64_t)d);
        uint64_t max_ts = 0;
        struct avl_record last = {0};
        for (int p = 0; p < PACKETS; p++) {
            int n = pktgen_packet_tcp(&g, PKTGEN_REALISTIC, codecs[(d + p) % 3],
                                      PKTGEN_RECORDS_RANDOM, &pkt, frame, sizeof frame);
            assert_true(n > 0);
            struct avl_packet hp;
            assert_int_equal(avl_decode_tcp(frame, (size_t)n, &hp, recs), 0);
            for (unsigned r = 0; r < hp.records_len; r++) {
                uint8_t row[8192];
                int w = copyenc_row(COPYENC_ARRAYS, row, sizeof row, g.imei, &recs[r], received_us);
                assert_true(w > 0);
                buf_put(&data, row, (size_t)w);
                rows++;
                if (recs[r].ts_ms >= max_ts) {
                    max_ts = recs[r].ts_ms;
                    last = recs[r];
                }
            }
        }
        const char *sep = d == DEVICES - 1 ? "}" : ",";
        snprintf(imeis + strlen(imeis), 64, "%llu%s", (unsigned long long)g.imei, sep);
        snprintf(last_ts + strlen(last_ts), 64, "%llu%s", (unsigned long long)max_ts, sep);
        snprintf(rx + strlen(rx), 64, "%lld%s", (long long)(received_us / 1000), sep);
        snprintf(lon + strlen(lon), 64, "%d%s", last.lon_e7, sep);
        snprintf(lat + strlen(lat), 64, "%d%s", last.lat_e7, sep);
        snprintf(dedup + strlen(dedup), 64, "\"\\\\x%02x\"%s", d, sep);
        snprintf(owners + strlen(owners), 64, "%d%s", 101 + d, sep); /* no row yet: theirs */
    }
    buf_put(&data, trl, (size_t)copyenc_trailer(trl));
    const char *params[9] = {imeis, last_ts, rx, lon, lat, dedup, "test-instance", "3", owners};
    struct iovec iov = {.iov_base = data.p, .iov_len = data.len};
    struct pgsink_txn txn = {.copy = &iov, .copy_iovs = 1, .state_params = params};
    assert_int_equal(pgsink_submit(h.sink, &txn, (void *)1, tu_now_ms()), 0);
    assert_true(pump(&h, until_txns, 1, WAIT_MS));
    expect_outcome(&h.txns[0], PGSINK_COMMITTED, "");
    assert_int_equal(h.txns[0].r.copy_rows, rows);
    assert_int_equal(side_ll(db.conn, "SELECT count(*) FROM telemetry.positions"), rows);
    assert_int_equal(side_ll(db.conn, "SELECT count(*) FROM public.device_state WHERE instance = "
                                      "'test-instance' AND shard = 3 AND owner = 101 + "
                                      "get_byte(dedup, 0)"),
                     DEVICES);

    /* and what the gateway loads when a device connects again on the shard that holds its
     * token: its window, its token, nothing claimed */
    char imei0[32];
    snprintf(imei0, sizeof imei0, "%.*s", (int)strcspn(imeis + 1, ","), imeis + 1);
    const char *qp[] = {imei0, "101"};
    assert_int_equal(
        pgsink_query(h.sink,
                     "SELECT encode(dedup, 'hex') || ' ' || owner || ' ' || claimed FROM "
                     "telemetry.device_state_claim($1, $2, false)",
                     2, qp, (void *)2, tu_now_ms()),
        0);
    assert_true(pump(&h, until_queries, 1, WAIT_MS));
    assert_string_equal(h.queries[0].value, "00 101 false");
    harness_stop(&h);
    free(data.p);
    pgtest_db_drop(&db);
}

/* ---- the device-state parameters in binary format ---------------------------------------- */

enum { STATE_FPS_MAX = 64, STATE_DEVS = 4, TEXT_IMEI_OFFSET = 1000000 };

/* One device's values for telemetry.device_state_upsert_owned, as the gateway holds them. */
struct state_dev {
    uint64_t imei;
    int64_t last_ts_ms; /* < 0: no stored record: last_ts, lon and lat are NULL */
    int64_t received_ms;
    int32_t lon_e7, lat_e7;
    int64_t owner; /* the owner token its rows are written under */
    unsigned fps_len;
    uint64_t fps[STATE_FPS_MAX]; /* oldest first */
};

/* The nine parameters as the gateway sends them: six binary arrays, the instance as text, the
 * shard as binary int4, the owners' binary array. */
struct state_bin {
    uint8_t buf[STATE_DEVS * 640 + 320];
    const char *params[9];
    int lengths[9];
};

static const int STATE_BIN_FORMATS[9] = {1, 1, 1, 1, 1, 1, 0, 1, 1};

/* Element i of array column col (imei, last_ts, received, lon, lat, dedup, owner); a is the
 * array's header. */
static uint8_t *state_bin_elem(uint8_t *a, uint8_t *o, int col, const struct state_dev *d)
{
    bool stored = d->last_ts_ms >= 0;
    switch (col) {
    case 0:
        return pgsink_array_int8(o, (int64_t)d->imei);
    case 1:
        return stored ? pgsink_array_int8(o, d->last_ts_ms) : pgsink_array_null(a, o);
    case 2:
        return pgsink_array_int8(o, d->received_ms);
    case 3:
        return stored ? pgsink_array_int4(o, d->lon_e7) : pgsink_array_null(a, o);
    case 4:
        return stored ? pgsink_array_int4(o, d->lat_e7) : pgsink_array_null(a, o);
    case 5:
        o = pgsink_array_elem(o, 8 * d->fps_len);
        for (unsigned k = 0; k < d->fps_len; k++)
            o = pgsink_put_be64(o, d->fps[k]);
        return o;
    default:
        return pgsink_array_int8(o, d->owner);
    }
}

static void state_bin_build(struct state_bin *p, const struct state_dev *devs, uint32_t n,
                            const char *instance, uint32_t shard)
{
    static const uint32_t oids[7] = {PGSINK_OID_INT8, PGSINK_OID_INT8, PGSINK_OID_INT8,
                                     PGSINK_OID_INT4, PGSINK_OID_INT4, PGSINK_OID_BYTEA,
                                     PGSINK_OID_INT8};
    static const int param_of_col[7] = {0, 1, 2, 3, 4, 5, 8};
    assert_true(n <= STATE_DEVS);
    uint8_t *o = p->buf;
    for (int col = 0; col < 7; col++) {
        uint8_t *a = o;
        o = pgsink_array_begin(o, oids[col], n);
        for (uint32_t i = 0; i < n; i++)
            o = state_bin_elem(a, o, col, &devs[i]);
        p->params[param_of_col[col]] = (const char *)a;
        p->lengths[param_of_col[col]] = (int)(o - a);
    }
    p->params[6] = instance;
    p->lengths[6] = 0;
    p->params[7] = (const char *)o;
    o = pgsink_put_be32(o, shard);
    p->lengths[7] = 4;
    assert_true((size_t)(o - p->buf) <= sizeof p->buf);
}

/* A fingerprint as bytea's hex output writes it: 16 hex digits, most significant byte first. */
static char *fp_hex(char *o, uint64_t fp)
{
    for (int b = 7; b >= 0; b--)
        o += sprintf(o, "%02x", (unsigned)(uint8_t)(fp >> (8 * b)));
    return o;
}

/* The same parameters as text arrays, the way the gateway wrote them before (imei shifted by
 * TEXT_IMEI_OFFSET so both land side by side). */
struct state_text {
    char cols[7][STATE_DEVS * (24 + 16 * STATE_FPS_MAX + 8) + 8];
    char shard[16];
    const char *params[9];
};

static void state_text_build(struct state_text *p, const struct state_dev *devs, uint32_t n,
                             const char *instance, uint32_t shard)
{
    for (int col = 0; col < 7; col++) {
        char *o = p->cols[col];
        *o++ = '{';
        for (uint32_t i = 0; i < n; i++) {
            const struct state_dev *d = &devs[i];
            bool stored = d->last_ts_ms >= 0;
            if (i)
                *o++ = ',';
            if (col == 0)
                o += sprintf(o, "%llu", (unsigned long long)(d->imei + TEXT_IMEI_OFFSET));
            else if (col == 1)
                o += stored ? sprintf(o, "%lld", (long long)d->last_ts_ms) : sprintf(o, "NULL");
            else if (col == 2)
                o += sprintf(o, "%lld", (long long)d->received_ms);
            else if (col == 3)
                o += stored ? sprintf(o, "%d", d->lon_e7) : sprintf(o, "NULL");
            else if (col == 4)
                o += stored ? sprintf(o, "%d", d->lat_e7) : sprintf(o, "NULL");
            else if (col == 6)
                o += sprintf(o, "%lld", (long long)d->owner);
            else {
                o += sprintf(o, "\"\\\\x");
                for (unsigned k = 0; k < d->fps_len; k++)
                    o = fp_hex(o, d->fps[k]);
                *o++ = '"';
            }
        }
        *o++ = '}';
        *o = '\0';
        assert_true((size_t)(o - p->cols[col]) < sizeof p->cols[col]);
        p->params[col == 6 ? 8 : col] = p->cols[col];
    }
    snprintf(p->shard, sizeof p->shard, "%u", shard);
    p->params[6] = instance;
    p->params[7] = p->shard;
}

/* Runs one transaction of an empty COPY and the state statement with params; expects outcome
 * o with sqlstate. */
static void state_submit(struct harness *h, const char *const *params, const int *lengths,
                         const int *formats, enum pgsink_outcome o, const char *sqlstate)
{
    uint8_t hdr[COPYENC_HEADER_BYTES], trl[COPYENC_TRAILER_BYTES];
    struct iovec iov[2] = {{hdr, (size_t)copyenc_header(hdr)}, {trl, (size_t)copyenc_trailer(trl)}};
    struct pgsink_txn txn = {.copy = iov,
                             .copy_iovs = 2,
                             .state_params = params,
                             .state_lengths = lengths,
                             .state_formats = formats};
    int before = h->txns_len;
    int rc = pgsink_submit(h->sink, &txn, (void *)9, tu_now_ms());
    if (rc != 0)
        fail_msg("pgsink_submit: %d (%s)", rc, pgsink_last_error(h->sink, PGSINK_LINK_DATA));
    assert_true(pump(h, until_txns, before + 1, WAIT_MS));
    expect_outcome(&h->txns[before], o, sqlstate);
}

/* Commits one transaction of an empty COPY and the state statement with params. */
static void state_commit(struct harness *h, const char *const *params, const int *lengths,
                         const int *formats)
{
    state_submit(h, params, lengths, formats, PGSINK_COMMITTED, "");
}

/* Every column of the device's row (binary imei) against what was sent; the dedup also as
 * device_state_claim returns it to the holder of the row's token (the text the gateway parses
 * when the device connects again), which claims nothing. */
static void state_expect_row(PGconn *c, const struct state_dev *d, const char *instance,
                             uint32_t shard)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT telemetry.timestamptz_to_ms(last_ts), round(last_lon * 1e7)::int,"
             " round(last_lat * 1e7)::int, telemetry.timestamptz_to_ms(last_received_at),"
             " instance, shard, s.dedup, g.dedup, length(s.dedup), s.owner,"
             " g.owner = s.owner AND NOT g.claimed FROM public.device_state s,"
             " telemetry.device_state_claim(s.imei, s.owner, false) g WHERE s.imei = %llu",
             (unsigned long long)d->imei);
    PGresult *r = pgtest_query(c, sql);
    assert_int_equal(PQntuples(r), 1);
    bool stored = d->last_ts_ms >= 0;
    for (int col = 0; col < 3; col++)
        assert_int_equal(PQgetisnull(r, 0, col), !stored);
    if (stored) {
        assert_int_equal(strtoll(PQgetvalue(r, 0, 0), NULL, 10), d->last_ts_ms);
        assert_int_equal(strtoll(PQgetvalue(r, 0, 1), NULL, 10), d->lon_e7);
        assert_int_equal(strtoll(PQgetvalue(r, 0, 2), NULL, 10), d->lat_e7);
    }
    assert_int_equal(strtoll(PQgetvalue(r, 0, 3), NULL, 10), d->received_ms);
    assert_string_equal(PQgetvalue(r, 0, 4), instance);
    assert_int_equal(strtoll(PQgetvalue(r, 0, 5), NULL, 10), shard);
    char hex[3 + 16 * STATE_FPS_MAX] = "\\x", *o = hex + 2;
    for (unsigned k = 0; k < d->fps_len; k++)
        o = fp_hex(o, d->fps[k]);
    assert_false(PQgetisnull(r, 0, 6)); /* an empty dedup is an empty bytea, not NULL */
    assert_string_equal(PQgetvalue(r, 0, 6), hex);
    assert_string_equal(PQgetvalue(r, 0, 7), hex);
    assert_int_equal(strtoll(PQgetvalue(r, 0, 8), NULL, 10), 8 * d->fps_len);
    assert_int_equal(strtoll(PQgetvalue(r, 0, 9), NULL, 10), d->owner);
    assert_string_equal(PQgetvalue(r, 0, 10), "t");
    PQclear(r);
}

/* The binary rows and the text rows are the same, column by column. */
static void state_expect_same_as_text(PGconn *c)
{
    assert_int_equal(side_ll(c, "SELECT count(*) FROM public.device_state"), 2 * STATE_DEVS);
    assert_int_equal(side_ll(c,
                             "SELECT count(*) FROM public.device_state b"
                             " JOIN public.device_state t ON t.imei = b.imei + %d"
                             " WHERE (b.last_ts, b.last_lon, b.last_lat, b.last_received_at,"
                             " b.instance, b.shard, b.dedup, b.owner) IS NOT DISTINCT FROM"
                             " (t.last_ts, t.last_lon, t.last_lat, t.last_received_at,"
                             " t.instance, t.shard, t.dedup, t.owner)",
                             TEXT_IMEI_OFFSET),
                     STATE_DEVS);
}

/* The state statement with binary parameters, as the gateway sends it, through the real
 * device_state_upsert_owned: NULL elements (a device without a stored record), an empty dedup,
 * a full one of 64 fingerprints whose bytes are all >= 0x80 and differ in every position (any
 * byte order or sign slip shows), extreme positions and times, owner tokens whose bytes differ
 * (one above 2^32). Every column is read back and compared, and the same values sent as text
 * arrays give the same rows; a second round updates the rows (NULLs over stored values) the
 * same way for both; a third, with one device's token not its row's, is refused whole (23AV0,
 * the gateway's "moved") and changes nothing. */
static void test_binary_state_params(void **state)
{
    (void)state;
    struct pgtest_db db;
    pgtest_db_create(&db, "pgsink_binstate", true);
    struct harness h;
    struct pgsink_config cfg;
    harness_config(&h, &cfg, db.conninfo);
    cfg.copy_sql = NULL;
    cfg.state_sql = NULL;
    cfg.state_nparams = 0;
    harness_start(&h, &cfg);
    assert_true(pump(&h, until_ready, 0, WAIT_MS));

    static struct state_dev devs[STATE_DEVS];
    memset(devs, 0, sizeof devs);
    devs[0] = (struct state_dev){.imei = 356307042441013,
                                 .last_ts_ms = 1767225600123,
                                 .received_ms = 1767225601456,
                                 .lon_e7 = -1800000000,
                                 .lat_e7 = 899999999,
                                 .owner = 0x0102030405060708,
                                 .fps_len = STATE_FPS_MAX};
    for (unsigned k = 0; k < STATE_FPS_MAX; k++)
        devs[0].fps[k] = 0xF0E1D2C3B4A59687ull ^ (k * 0x0101010101010101ull);
    /* no stored record: the values in lon/lat must not reach the row */
    devs[1] = (struct state_dev){.imei = 356307042441014,
                                 .last_ts_ms = -1,
                                 .received_ms = 1767225602000,
                                 .lon_e7 = 123,
                                 .lat_e7 = 456,
                                 .owner = INT64_MAX};
    devs[2] = (struct state_dev){.imei = 356307042441015,
                                 .last_ts_ms = 0,
                                 .received_ms = 1,
                                 .lon_e7 = 0,
                                 .lat_e7 = -1,
                                 .owner = 1,
                                 .fps_len = 3,
                                 .fps = {1, UINT64_MAX, 0x0123456789abcdefull}};
    devs[3] = (struct state_dev){.imei = 999999999999999,
                                 .last_ts_ms = 253402300799999,
                                 .received_ms = -1,
                                 .lon_e7 = 1800000000,
                                 .lat_e7 = -900000000,
                                 .owner = INT64_C(1) << 32,
                                 .fps_len = 1,
                                 .fps = {0x8000000000000000ull}};
    static struct state_bin bin;
    static struct state_text text;
    const char *instance = "bin-instance";

    /* A binary value needs its length: refused before anything is sent. */
    state_bin_build(&bin, devs, STATE_DEVS, instance, 7);
    struct pgsink_txn bad = {.state_params = bin.params, .state_formats = STATE_BIN_FORMATS};
    assert_int_equal(pgsink_submit(h.sink, &bad, NULL, tu_now_ms()), -EINVAL);
    int bad_format[9] = {1, 1, 1, 1, 1, 1, 0, 1, 2};
    bad.state_lengths = bin.lengths;
    bad.state_formats = bad_format;
    assert_int_equal(pgsink_submit(h.sink, &bad, NULL, tu_now_ms()), -EINVAL);
    assert_true(pgsink_ready(h.sink));

    state_commit(&h, bin.params, bin.lengths, STATE_BIN_FORMATS);
    state_text_build(&text, devs, STATE_DEVS, instance, 7);
    state_commit(&h, text.params, NULL, NULL);
    for (int i = 0; i < STATE_DEVS; i++)
        state_expect_row(db.conn, &devs[i], instance, 7);
    state_expect_same_as_text(db.conn);

    /* Round two: device 0 has no stored record now (its position stays), device 1 gets one
     * and a full dedup, device 2 an empty dedup; another shard. */
    devs[0].last_ts_ms = -1;
    devs[0].fps_len = 2;
    devs[1].last_ts_ms = 1767225700000;
    devs[1].fps_len = STATE_FPS_MAX;
    for (unsigned k = 0; k < STATE_FPS_MAX; k++)
        devs[1].fps[k] = ~(uint64_t)k;
    devs[2].fps_len = 0;
    state_bin_build(&bin, devs, STATE_DEVS, instance, 2);
    state_commit(&h, bin.params, bin.lengths, STATE_BIN_FORMATS);
    state_text_build(&text, devs, STATE_DEVS, instance, 2);
    state_commit(&h, text.params, NULL, NULL);
    state_expect_same_as_text(db.conn);
    assert_int_equal(side_ll(db.conn,
                             "SELECT telemetry.timestamptz_to_ms(last_ts) FROM public.device_state"
                             " WHERE imei = %llu",
                             (unsigned long long)devs[0].imei),
                     1767225600123);
    for (int i = 1; i < STATE_DEVS; i++)
        state_expect_row(db.conn, &devs[i], instance, 2);

    /* Round three: device 2 was taken over since (another token on its row): nothing of the
     * transaction is written, for any device. */
    char rows[512];
    const char *snap = "SELECT string_agg(imei || ':' || xmin, ' ' ORDER BY imei) FROM "
                       "public.device_state";
    pgtest_scalar(db.conn, snap, rows, sizeof rows);
    devs[0].fps_len = 5;
    devs[2].owner = 2;
    state_bin_build(&bin, devs, STATE_DEVS, instance, 3);
    state_submit(&h, bin.params, bin.lengths, STATE_BIN_FORMATS, PGSINK_DATA_ERROR, "23AV0");
    assert_contains(h.txns[h.txns_len - 1].message,
                    "device 356307042441015 is owned by another connection now");
    char after[512];
    assert_string_equal(pgtest_scalar(db.conn, snap, after, sizeof after), rows);
    harness_stop(&h);
    pgtest_db_drop(&db);
}

/* A server that accepts TCP and never answers: each attempt ends at connect_timeout_ms and is
 * retried; the link never comes up. */
static void test_connect_timeout(void **state)
{
    (void)state;
    int port;
    int ls = linkdrive_loopback(16, &port); /* the kernel completes handshakes; nobody reads */
    char conninfo[128];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%u dbname=x user=x", (unsigned)port);
    struct harness h;
    struct pgsink_config cfg;
    harness_config(&h, &cfg, conninfo);
    cfg.connect_timeout_ms = 150;
    cfg.backoff_min_ms = 10;
    cfg.backoff_max_ms = 20;
    harness_start(&h, &cfg);
    uint64_t t0 = tu_now_ms();
    assert_true(pump(&h, until_connect_failures, 2, WAIT_MS));
    assert_true(tu_now_ms() - t0 >= 2 * 150);
    assert_int_equal(h.ups[PGSINK_LINK_DATA], 0);
    assert_int_equal(pgsink_counters(h.sink)->connects, 0);
    assert_string_equal(pgsink_last_error(h.sink, PGSINK_LINK_DATA), "connect timed out");
    assert_int_equal(pgsink_submit(h.sink, &(struct pgsink_txn){0}, NULL, tu_now_ms()), -ENOTCONN);
    harness_stop(&h);
    close(ls);
}

static void test_config(void **state)
{
    (void)state;
    struct harness h;
    struct pgsink_config cfg;
    char err[128];
    harness_config(&h, &cfg, NULL);
    assert_null(pgsink_create(&cfg, err, sizeof err));
    assert_int_equal(errno, EINVAL);
    assert_non_null(strstr(err, "conninfo"));
    harness_config(&h, &cfg, "host=127.0.0.1");
    cfg.cb.on_txn_done = NULL;
    assert_null(pgsink_create(&cfg, err, sizeof err));
    harness_config(&h, &cfg, "host=127.0.0.1");
    cfg.backoff_min_ms = 500;
    cfg.backoff_max_ms = 100;
    assert_null(pgsink_create(&cfg, err, sizeof err));
    harness_config(&h, &cfg, "host=127.0.0.1");
    cfg.state_nparams = PGSINK_STATE_PARAMS_MAX + 1;
    assert_null(pgsink_create(&cfg, err, sizeof err));
    /* no control link: its fd stays -1, queries are refused */
    harness_config(&h, &cfg, "host=127.0.0.1");
    cfg.queries_max = 0;
    struct pgsink *s = pgsink_create(&cfg, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(pgsink_fd(s, PGSINK_LINK_CONTROL), -1);
    assert_int_equal(pgsink_events(s, PGSINK_LINK_CONTROL), 0);
    assert_int_equal(pgsink_next_deadline_ms(s), 0);
    assert_int_equal(pgsink_query(s, "SELECT 1", 0, NULL, NULL, 0), -ENOTCONN);
    assert_string_equal(pgsink_outcome_name(PGSINK_UNKNOWN), "unknown");
    pgsink_destroy(s);
}

/* ---- private-server cases: the server itself goes away ----------------------------------- */

struct own {
    struct linkdrive_server srv; /* srv.line: its conninfo */
    struct harness h;
    struct pgsink_config cfg;
};

static void own_schema(struct own *o)
{
    PGconn *c = side_connect(o->srv.line);
    pgtest_exec(c, TEST_SCHEMA_SQL);
    PQfinish(c);
}

static int own_setup(void **state)
{
    struct own *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    linkdrive_server_start(
        &o->srv, linkdrive_script("AVLGATE_PGTMP", AVLGATE_SOURCE_DIR "/tests/pg/pgtmp.sh"),
        "pgsink");
    own_schema(o);
    harness_config(&o->h, &o->cfg, o->srv.line);
    *state = o;
    return 0;
}

static int own_teardown(void **state)
{
    struct own *o = *state;
    if (o->h.sink)
        harness_stop(&o->h);
    linkdrive_server_remove(&o->srv, "kill");
    free(o);
    return 0;
}

/* The server stops (fast shutdown) while the sink is idle: the link goes down, submit and
 * query say -ENOTCONN, attempts back off exponentially while it is down, and the sink is back
 * once the server is. */
static void test_server_restart(void **state)
{
    struct own *o = *state;
    o->cfg.backoff_min_ms = 40;
    o->cfg.backoff_max_ms = 400;
    harness_start(&o->h, &o->cfg);
    struct harness *h = &o->h;
    assert_true(pump(h, until_ready, 0, WAIT_MS));
    expect_outcome(run_batch(h, &(struct batch_spec){.batch = 1}), PGSINK_COMMITTED, "");

    linkdrive_server_run(&o->srv, "stop");
    assert_true(pump(h, until_downs, 1, WAIT_MS));
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 2});
    assert_int_equal(pgsink_submit(h->sink, &b.txn, NULL, tu_now_ms()), -ENOTCONN);
    assert_int_equal(pgsink_query(h->sink, "SELECT 1", 0, NULL, NULL, tu_now_ms()), -ENOTCONN);
    assert_false(pgsink_ready(h->sink));

    /* Attempt k waits at least half of min * 2^k (capped at max): four failed attempts take
     * at least 20 + 40 + 80 + 160 ms after the loss; a loop without backoff would make
     * thousands. */
    uint64_t f0 = pgsink_counters(h->sink)->connect_failures;
    assert_true(pump(h, until_connect_failures, (long)f0 + 4, WAIT_MS));
    assert_true(tu_now_ms() - h->down_ms[PGSINK_LINK_DATA] >= 300);
    /* and at the ceiling: at least 200 ms per attempt */
    uint64_t f1 = pgsink_counters(h->sink)->connect_failures;
    uint64_t t0 = tu_now_ms();
    assert_true(pump(h, NULL, 0, 1000));
    uint64_t per_s = pgsink_counters(h->sink)->connect_failures - f1;
    assert_true(per_s >= 1 && per_s <= (tu_now_ms() - t0) / 200 + 1);
    assert_int_equal(h->ups[PGSINK_LINK_DATA], 1);

    linkdrive_server_run(&o->srv, "start");
    assert_true(pump(h, until_ups, 2, WAIT_MS));
    submit_ok(h, &b, (void *)2);
    assert_true(pump(h, until_txns, 2, WAIT_MS));
    expect_outcome(&h->txns[1], PGSINK_COMMITTED, "");
    batch_free(&b);
    PGconn *c = side_connect(o->srv.line);
    assert_int_equal(side_ll(c, "SELECT count(*) FROM pgsink_test.rows"), 20);
    PQfinish(c);
    /* The control link reconnects on its own backoff: it may come up after the commit. */
    assert_true(pump(h, until_control_ups, 2, WAIT_MS));
    const struct pgsink_counters *k = pgsink_counters(h->sink);
    assert_int_equal(k->connects, 2);
    assert_int_equal(k->disconnects, 1);
    assert_int_equal(k->control_connects, 2);
    harness_stop(h);
}

/* The server crashes (immediate shutdown: a WARNING, then EOF) while the state statement
 * runs with COMMIT queued behind it: no answer decides, so UNKNOWN. */
static void test_server_crash_after_commit_queued(void **state)
{
    struct own *o = *state;
    harness_start(&o->h, &o->cfg);
    struct harness *h = &o->h;
    assert_true(pump(h, until_ready, 0, WAIT_MS));
    PGconn *c = side_connect(o->srv.line);
    struct batch b;
    batch_build(&b, &(struct batch_spec){.batch = 3, .mode = "sleep:60"});
    int pid = pgsink_backend_pid(h->sink, PGSINK_LINK_DATA);
    submit_ok(h, &b, (void *)3);
    pump_until_sleeping(h, c, pid);
    PQfinish(c);
    linkdrive_server_run(&o->srv, "kill");
    assert_true(pump(h, until_txns, 1, WAIT_MS));
    batch_free(&b);
    expect_outcome(&h->txns[0], PGSINK_UNKNOWN, "");
    assert_int_equal(h->txns[0].r.backend_pid, pid);
    linkdrive_server_run(&o->srv, "start");
    assert_true(pump(h, until_ups, 2, WAIT_MS));
    expect_outcome(run_batch(h, &(struct batch_spec){.batch = 4}), PGSINK_COMMITTED, "");
    harness_stop(h);
}

int main(void)
{
    const struct CMUnitTest fixture_tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test_setup_teardown(test_commit_many, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_large_copy, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_copy_statement, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_break_mid_copy, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_terminated_before_commit_ran, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_terminated_during_commit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_after_commit_queued, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_server_timeouts, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_control_queries, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_query_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_in_flight, fx_setup, fx_teardown),
        cmocka_unit_test(test_real_schema),
        cmocka_unit_test(test_binary_state_params),
    };
    const struct CMUnitTest own_server_tests[] = {
        cmocka_unit_test(test_server_restart),
        cmocka_unit_test(test_server_crash_after_commit_queued),
    };
    int failed = cmocka_run_group_tests_name("pgsink", fixture_tests, NULL, NULL);
    failed +=
        cmocka_run_group_tests_name("pgsink_own_server", own_server_tests, own_setup, own_teardown);
    return failed;
}
