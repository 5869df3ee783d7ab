/* pgsink.c — one shard's PostgreSQL links: the ingest transaction on the data link, look-ups
 * on the control link, reconnects with jittered exponential backoff.
 *
 * Owns: two PGconn (created by PQconnectStart, freed by PQfinish on every loss), the state of
 * the one transaction in flight, the ring of control queries in flight, the counters.
 * Thread: the shard's only. Every entry point runs to completion without waiting; the sockets
 * are polled by the caller (pgsink.h says how).
 *
 * The data link's transaction, one at a time:
 *
 *   IDLE --submit--> BEGIN      "BEGIN;[SET LOCAL ...;]<copy_sql>" as one simple query: the
 *                               COMMAND_OK of BEGIN (and of each SET: the transaction's
 *                               timeouts), then COPY_IN (or an error, then NULL)
 *        -> COPY                PQputCopyData in chunks of PGSINK_COPY_CHUNK_BYTES, a flush
 *                               after each: libpq's buffer holds at most about one chunk plus
 *                               what the socket did not take; when the socket is full, wait
 *                               for POLLOUT. Then PQputCopyEnd.
 *        -> COPY_END            the COPY's result (rows or the error), then NULL
 *        -> PIPELINE            pipeline mode: state statement, COMMIT, sync; results in order
 *                               (statement, NULL, COMMIT, NULL, PIPELINE_SYNC); exit pipeline
 *        -> IDLE                outcome reported (on_txn_done)
 *
 *   An error in BEGIN, COPY_END or PIPELINE that leaves the session inside the transaction
 *   block goes through ROLLBACK first, so the outcome is reported when the next submit can
 *   be accepted.
 *
 * The outcome rule. Results arrive in the order the server executed the statements, and the
 * server stops executing a pipeline at its first error. So:
 *   - an error (any severity) for BEGIN, the COPY or the state statement proves that COMMIT
 *     never ran: NOT_COMMITTED, or DATA_ERROR for SQLSTATE classes 22/23. The proof holds
 *     even if the link breaks right after (e.g. pg_terminate_backend during the statement:
 *     the FATAL 57P01 arrives as that statement's result).
 *   - COMMIT's own result decides: "COMMIT" -> COMMITTED, "ROLLBACK" or an ERROR ->
 *     NOT_COMMITTED/DATA_ERROR (the server rolled back and the session goes on); a FATAL or
 *     PANIC on COMMIT ended the session inside COMMIT, possibly after the commit record was
 *     written -> UNKNOWN. (A commit cut short while waiting for a synchronous standby says
 *     only WARNING before the link closes: the case below.)
 *   - no decisive result and the link is gone (broken, timed out, destroyed): UNKNOWN if
 *     COMMIT was queued to libpq, else NOT_COMMITTED. "Queued" rather than "flushed": libpq
 *     may write while PQsendQueryParams runs, and the COMMIT's Execute message runs on the
 *     server before the sync behind it arrives, so no later point is observable. A
 *     PQsendQueryParams("COMMIT") that fails did not finish writing that message: it cannot
 *     have executed.
 * A result without SQLSTATE is libpq's own (connection lost, out of memory): it proves
 * nothing and drops the link.
 *
 * Why a second (control) link rather than look-ups between transactions: see pgsink.h. It is
 * in pipeline mode from connect to loss; each query is followed by its own sync, so it is its
 * own implicit transaction. Queries are not held while the link is down: the caller gets
 * -ENOTCONN and retries on on_state(true).
 *
 * Backoff, connect timeout and the last error: gateway/reconnect.h, one policy (and one jitter
 * sequence) for both links, seeded with cfg.seed.
 */
#include "gateway/pgsink.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/reconnect.h"

/* The transaction's first query (begin_sql): BEGIN, up to two SET LOCAL, the COPY. */
#define PGSINK_BEGIN_FMT "BEGIN;SET LOCAL statement_timeout = ;SET LOCAL lock_timeout = ;"

enum {
    PGSINK_CONNECT_TIMEOUT_MS_DEFAULT = 10000,
    PGSINK_COPY_BYTES_PER_IO_DEFAULT = 1024 * 1024,
    PGSINK_RESULTS_PER_IO_MAX = 64, /* results read in one pass before yielding */
    PGSINK_STEPS_PER_IO_MAX = 8,    /* phase changes in one pgsink_on_io() */
};

struct pgsink_conn {
    PGconn *conn;
    enum pgsink_phase phase;
    int fd;
    uint32_t epoch;
    short connect_events; /* CONNECTING: what the last PQconnectPoll asked for */
    bool want_write;      /* libpq holds output the socket has not taken */
    bool broken;          /* a send failed outside on_io/tick: drop the link at the next tick */
    bool more;            /* a read loop stopped at its bound with results left: tick resumes */
    int backend_pid;
    struct reconnect rc; /* backoff, connect deadline, the last error (pgsink_last_error) */
};

struct pgsink_txn_state {
    bool active;
    bool decided; /* outcome is final whatever happens to the link */
    bool commit_queued;
    uint8_t pipe_step; /* PIPELINE: 0 state statement, 1 COMMIT, 2 sync */
    enum pgsink_outcome outcome;
    void *cookie;
    struct pgsink_txn txn;
    int iov;        /* COPY: the iovec being sent */
    size_t iov_off; /* COPY: its bytes already handed to libpq */
    int64_t copy_rows;
    int backend_pid;
    uint64_t deadline_ms; /* UINT64_MAX: no timeout */
    char sqlstate[6];
    char message[PGSINK_MESSAGE_BYTES];
};

struct pgsink_query_slot {
    void *cookie;
    uint64_t sent_ms;
};

struct pgsink {
    struct pgsink_conn links[PGSINK_LINKS];
    struct pgsink_txn_state txn;
    /* Control queries in flight, oldest at ctl_head. A query's slot is freed when its result
     * is delivered; its PIPELINE_SYNC is still to come then (ctl_syncs_owed, 0 or 1). */
    struct pgsink_query_slot *ctl;
    uint32_t ctl_head;
    uint32_t ctl_len;
    uint32_t ctl_syncs_owed;

    struct pgsink_counters counters;
    struct pgsink_callbacks cb;
    void *user;
    char *conninfo;
    char *copy_sql;
    char *begin_sql; /* the transaction's first query, written at submit (begin_sql_cap) */
    size_t begin_sql_cap;
    char *state_sql;
    int state_nparams;
    struct reconnect_policy reconnect; /* both links' backoff and connect timeout */
    uint32_t txn_timeout_ms;
    uint32_t query_timeout_ms;
    uint32_t queries_max;
    uint32_t copy_bytes_per_io;
    char result_message[PGSINK_MESSAGE_BYTES]; /* what on_txn_done's result points at */
};

static void link_down(struct pgsink *s, enum pgsink_link link, uint64_t now_ms, int query_err);

/* ---- small helpers ------------------------------------------------------------------------ */

_Static_assert((int)RECONNECT_ERROR_BYTES == (int)PGSINK_MESSAGE_BYTES,
               "a link's last error is kept as long as a result's message");

static char *dup_str(const char *str)
{
    size_t n = strlen(str) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, str, n);
    return p;
}

static void set_error(struct pgsink_conn *l, const char *msg)
{
    reconnect_set_error(&l->rc, msg);
}

static bool link_up(const struct pgsink_conn *l)
{
    return l->phase >= PGSINK_PHASE_IDLE;
}

/* The server's SQLSTATE of an error result, or NULL for one libpq made itself. */
static const char *result_sqlstate(const PGresult *res)
{
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return st && strlen(st) == 5 ? st : NULL;
}

static bool result_fatal(const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

static enum pgsink_outcome classify(const char *sqlstate)
{
    if (sqlstate[0] == '2' && (sqlstate[1] == '2' || sqlstate[1] == '3'))
        return PGSINK_DATA_ERROR;
    return PGSINK_NOT_COMMITTED;
}

static void on_notice(void *arg, const char *message)
{
    struct pgsink *s = arg;
    (void)message;
    s->counters.notices++;
}

/* Flushes libpq's output. Returns 0 (all written or waiting for POLLOUT) or -1 (link failed). */
static int link_flush(struct pgsink_conn *l)
{
    int r = PQflush(l->conn);
    /* After a failed write libpq drops its output and reports success until it reads the
     * EOF; the status tells. */
    if (r < 0 || PQstatus(l->conn) == CONNECTION_BAD) {
        set_error(l, PQerrorMessage(l->conn));
        return -1;
    }
    l->want_write = r > 0;
    return 0;
}

/* ---- connecting --------------------------------------------------------------------------- */

/* Forgets the connection and schedules the next attempt. */
static void link_close(struct pgsink *s, struct pgsink_conn *l, uint64_t now_ms)
{
    if (l->conn)
        PQfinish(l->conn);
    l->conn = NULL;
    l->fd = -1;
    l->epoch++;
    l->phase = PGSINK_PHASE_DOWN;
    l->want_write = false;
    l->broken = false;
    l->more = false;
    l->backend_pid = 0;
    reconnect_schedule(&l->rc, &s->reconnect, now_ms);
}

static void connect_failed(struct pgsink *s, enum pgsink_link link, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[link];
    if (link == PGSINK_LINK_DATA)
        s->counters.connect_failures++;
    else
        s->counters.control_connect_failures++;
    link_close(s, l, now_ms);
}

static void connect_start(struct pgsink *s, enum pgsink_link link, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[link];
    assert(l->phase == PGSINK_PHASE_DOWN && l->conn == NULL);
    l->conn = PQconnectStart(s->conninfo);
    l->epoch++;
    if (l->conn == NULL) {
        set_error(l, "out of memory allocating a connection");
        connect_failed(s, link, now_ms);
        return;
    }
    if (PQstatus(l->conn) == CONNECTION_BAD) {
        set_error(l, PQerrorMessage(l->conn));
        connect_failed(s, link, now_ms);
        return;
    }
    PQsetNoticeProcessor(l->conn, on_notice, s); /* never libpq's default: stderr */
    l->fd = PQsocket(l->conn);
    l->phase = PGSINK_PHASE_CONNECTING;
    l->connect_events = POLLOUT;
    reconnect_attempt(&l->rc, &s->reconnect, now_ms);
}

/* The session is open: make it non-blocking, route notices, enter pipeline mode (control). */
static void connect_done(struct pgsink *s, enum pgsink_link link, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[link];
    if (PQsetnonblocking(l->conn, 1) != 0 ||
        (link == PGSINK_LINK_CONTROL && PQenterPipelineMode(l->conn) != 1)) {
        set_error(l, PQerrorMessage(l->conn));
        connect_failed(s, link, now_ms);
        return;
    }
    l->fd = PQsocket(l->conn);
    l->backend_pid = PQbackendPID(l->conn);
    l->phase = PGSINK_PHASE_IDLE;
    reconnect_up(&l->rc, now_ms);
    l->want_write = false;
    if (link == PGSINK_LINK_DATA)
        s->counters.connects++;
    else
        s->counters.control_connects++;
    if (s->cb.on_state)
        s->cb.on_state(s->user, link, true);
}

static void connect_poll(struct pgsink *s, enum pgsink_link link, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[link];
    assert(l->phase == PGSINK_PHASE_CONNECTING);
    PostgresPollingStatusType r = PQconnectPoll(l->conn);
    /* libpq may have closed the socket and opened another, possibly with the same number. */
    l->fd = PQsocket(l->conn);
    l->epoch++;
    switch (r) {
    case PGRES_POLLING_READING:
        l->connect_events = POLLIN;
        break;
    case PGRES_POLLING_WRITING:
        l->connect_events = POLLOUT;
        break;
    case PGRES_POLLING_OK:
        connect_done(s, link, now_ms);
        break;
    case PGRES_POLLING_FAILED:
    default:
        set_error(l, PQerrorMessage(l->conn));
        connect_failed(s, link, now_ms);
        break;
    }
}

/* ---- the transaction ---------------------------------------------------------------------- */

static void txn_decide(struct pgsink *s, enum pgsink_outcome o, const char *sqlstate,
                       const char *message)
{
    struct pgsink_txn_state *t = &s->txn;
    if (t->decided)
        return; /* the first decisive fact wins */
    t->decided = true;
    t->outcome = o;
    snprintf(t->sqlstate, sizeof(t->sqlstate), "%s", sqlstate ? sqlstate : "");
    message = message ? message : "";
    snprintf(t->message, sizeof(t->message), "%.*s", (int)strcspn(message, "\n"), message);
}

/* An error result inside the transaction. Returns -1 when it is libpq's (the link is gone),
 * after deciding the outcome from the server's answer otherwise. */
static int txn_error(struct pgsink *s, const PGresult *res, bool on_commit)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    const char *st = result_sqlstate(res);
    set_error(l, PQresultErrorMessage(res));
    if (st == NULL)
        return -1;
    if (on_commit && result_fatal(res))
        txn_decide(s, PGSINK_UNKNOWN, st, PQresultErrorMessage(res));
    else
        txn_decide(s, classify(st), st, PQresultErrorMessage(res));
    return 0;
}

/* Reports the outcome and frees the transaction slot; the link's phase is the caller's. */
static void txn_deliver(struct pgsink *s)
{
    struct pgsink_txn_state *t = &s->txn;
    assert(t->active && t->decided);
    struct pgsink_txn_result r;
    memset(&r, 0, sizeof(r));
    r.outcome = t->outcome;
    memcpy(r.sqlstate, t->sqlstate, sizeof(r.sqlstate));
    memcpy(s->result_message, t->message, sizeof(s->result_message));
    r.message = s->result_message;
    r.copy_rows = t->copy_rows;
    r.backend_pid = t->backend_pid;
    r.timed_out = t->outcome == PGSINK_NOT_COMMITTED &&
                  (strcmp(t->sqlstate, "57014") == 0 || strcmp(t->sqlstate, "55P03") == 0);
    switch (t->outcome) {
    case PGSINK_COMMITTED:
        s->counters.txns_committed++;
        if (t->copy_rows > 0)
            s->counters.copy_rows += (uint64_t)t->copy_rows;
        break;
    case PGSINK_NOT_COMMITTED:
        s->counters.txns_not_committed++;
        s->counters.txns_timed_out += r.timed_out;
        break;
    case PGSINK_UNKNOWN:
        s->counters.txns_unknown++;
        break;
    case PGSINK_DATA_ERROR:
        s->counters.txns_data_error++;
        break;
    }
    void *cookie = t->cookie;
    t->active = false;
    s->cb.on_txn_done(s->user, cookie, &r);
}

/* The link stays up and the transaction is over: back to idle, rolling back first when the
 * session is still inside the transaction block. Returns -1 if the session is unusable. */
static int txn_settle(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    struct pgsink_txn_state *t = &s->txn;
    assert(t->decided);
    switch (PQtransactionStatus(l->conn)) {
    case PQTRANS_IDLE:
        l->phase = PGSINK_PHASE_IDLE;
        txn_deliver(s);
        return 0;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        if (l->phase == PGSINK_PHASE_ROLLBACK)
            return -1; /* ROLLBACK did not end it */
        if (!PQsendQuery(l->conn, "ROLLBACK")) {
            set_error(l, PQerrorMessage(l->conn));
            return -1;
        }
        s->counters.rollbacks++;
        l->phase = PGSINK_PHASE_ROLLBACK;
        return link_flush(l);
    default:
        set_error(l, "session in an unexpected transaction state");
        return -1;
    }
}

/* BEGIN: BEGIN's result, then COPY_IN, or an error and NULL. */
static int txn_read_begin(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    assert(l->phase == PGSINK_PHASE_BEGIN && s->txn.active && !s->txn.commit_queued);
    for (int i = 0; !PQisBusy(l->conn); i++) {
        if (i == PGSINK_RESULTS_PER_IO_MAX) {
            l->more = true; /* bounded work per call: pgsink_tick() goes on */
            break;
        }
        PGresult *res = PQgetResult(l->conn);
        if (res == NULL) {
            /* The query ended without COPY IN: an error, or copy_sql is not a COPY FROM STDIN. */
            txn_decide(s, PGSINK_NOT_COMMITTED, NULL, "copy_sql did not start COPY FROM STDIN");
            return txn_settle(s);
        }
        int rc = 0;
        switch (PQresultStatus(res)) {
        case PGRES_COPY_IN:
            PQclear(res);
            /* An error ends the query string: nothing after it starts. */
            assert(!s->txn.decided);
            l->phase = PGSINK_PHASE_COPY;
            return 0; /* PQgetResult would now return COPY_IN for ever */
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
            rc = txn_error(s, res, false);
            break;
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
            break; /* BEGIN */
        default:
            /* COPY OUT or BOTH would keep the session busy for ever: copy_sql is wrong. */
            set_error(l, "copy_sql started something other than COPY FROM STDIN");
            rc = -1;
            break;
        }
        PQclear(res);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* COPY: hands the data to libpq chunk by chunk, flushing after each chunk so that libpq's
 * buffer stays small, and yields after copy_bytes_per_io so one large transaction does not
 * starve the shard's loop. */
static int txn_stream(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    struct pgsink_txn_state *t = &s->txn;
    assert(l->phase == PGSINK_PHASE_COPY && t->active && !t->decided);
    assert(t->iov <= t->txn.copy_iovs);
    uint64_t budget = s->copy_bytes_per_io;
    if (l->want_write) {
        if (link_flush(l) < 0)
            return -1;
        if (l->want_write)
            return 0;
    }
    while (t->iov < t->txn.copy_iovs) {
        if (budget == 0)
            return 0; /* POLLOUT stays wanted in this phase: the loop calls again */
        const struct iovec *v = &t->txn.copy[t->iov];
        size_t left = v->iov_len - t->iov_off;
        if (left == 0) {
            t->iov++;
            t->iov_off = 0;
            continue;
        }
        size_t n = left < PGSINK_COPY_CHUNK_BYTES ? left : PGSINK_COPY_CHUNK_BYTES;
        if (n > budget)
            n = (size_t)budget;
        int r = PQputCopyData(l->conn, (const char *)v->iov_base + t->iov_off, (int)n);
        if (r < 0) {
            set_error(l, PQerrorMessage(l->conn));
            return -1;
        }
        if (r == 0) {
            l->want_write = true;
            s->counters.write_waits++;
            return 0;
        }
        t->iov_off += n;
        budget -= n;
        s->counters.copy_bytes += n;
        if (link_flush(l) < 0)
            return -1;
        if (l->want_write) {
            s->counters.write_waits++;
            return 0;
        }
    }
    int r = PQputCopyEnd(l->conn, NULL);
    if (r < 0) {
        set_error(l, PQerrorMessage(l->conn));
        return -1;
    }
    if (r == 0) {
        l->want_write = true;
        return 0;
    }
    l->phase = PGSINK_PHASE_COPY_END;
    return link_flush(l);
}

/* Queues the state statement, COMMIT and a sync in pipeline mode. */
static int txn_send_pipeline(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    struct pgsink_txn_state *t = &s->txn;
    assert(l->phase == PGSINK_PHASE_COPY_END && !t->decided && !t->commit_queued);
    if (PQenterPipelineMode(l->conn) != 1)
        goto fail;
    t->pipe_step = 1;
    if (t->txn.state_params != NULL) {
        const int *lengths = t->txn.state_formats ? t->txn.state_lengths : NULL;
        if (!PQsendQueryParams(l->conn, s->state_sql, s->state_nparams, NULL, t->txn.state_params,
                               lengths, t->txn.state_formats, 0))
            goto fail;
        t->pipe_step = 0;
    }
    if (!PQsendQueryParams(l->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))
        goto fail;
    t->commit_queued = true;
    if (!PQpipelineSync(l->conn))
        goto fail;
    l->phase = PGSINK_PHASE_PIPELINE;
    return link_flush(l);
fail:
    set_error(l, PQerrorMessage(l->conn));
    return -1;
}

/* COPY_END: the COPY's result, then NULL. */
static int txn_read_copy_end(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    struct pgsink_txn_state *t = &s->txn;
    assert(l->phase == PGSINK_PHASE_COPY_END && t->active && !t->commit_queued);
    for (int i = 0; !PQisBusy(l->conn); i++) {
        if (i == PGSINK_RESULTS_PER_IO_MAX) {
            l->more = true; /* bounded work per call: pgsink_tick() goes on */
            break;
        }
        PGresult *res = PQgetResult(l->conn);
        if (res == NULL) {
            if (t->decided)
                return txn_settle(s);
            return txn_send_pipeline(s);
        }
        int rc = 0;
        switch (PQresultStatus(res)) {
        case PGRES_COMMAND_OK:
            t->copy_rows = strtoll(PQcmdTuples(res), NULL, 10);
            break;
        case PGRES_FATAL_ERROR:
        case PGRES_NONFATAL_ERROR:
            rc = txn_error(s, res, false);
            break;
        default:
            set_error(l, "unexpected result after the COPY data");
            rc = -1;
            break;
        }
        PQclear(res);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The pipeline is over: leave pipeline mode and settle. */
static int txn_pipeline_done(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    if (PQexitPipelineMode(l->conn) != 1) {
        set_error(l, PQerrorMessage(l->conn));
        return -1;
    }
    if (!s->txn.decided) {
        /* A sync without COMMIT's result: libpq and the sink disagree about the pipeline. */
        txn_decide(s, PGSINK_UNKNOWN, NULL, "pipeline ended without COMMIT's result");
        set_error(l, s->txn.message);
        return -1;
    }
    return txn_settle(s);
}

/* PIPELINE: the state statement's result and NULL, COMMIT's and NULL, then the sync. */
static int txn_read_pipeline(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    struct pgsink_txn_state *t = &s->txn;
    assert(l->phase == PGSINK_PHASE_PIPELINE && t->active && t->commit_queued);
    assert(PQpipelineStatus(l->conn) != PQ_PIPELINE_OFF);
    for (int i = 0; !PQisBusy(l->conn); i++) {
        if (i == PGSINK_RESULTS_PER_IO_MAX) {
            l->more = true; /* bounded work per call: pgsink_tick() goes on */
            break;
        }
        PGresult *res = PQgetResult(l->conn);
        if (res == NULL) {
            if (t->pipe_step < 2)
                t->pipe_step++;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        int rc = 0;
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            return txn_pipeline_done(s);
        }
        if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR) {
            rc = txn_error(s, res, t->pipe_step == 1);
        } else if (t->pipe_step == 1 && st == PGRES_COMMAND_OK) {
            if (strcmp(PQcmdStatus(res), "COMMIT") == 0)
                txn_decide(s, PGSINK_COMMITTED, NULL, NULL);
            else
                txn_decide(s, PGSINK_NOT_COMMITTED, NULL, "COMMIT answered with ROLLBACK");
        } else if (st == PGRES_PIPELINE_ABORTED) {
            /* Skipped after an earlier error, which decided the outcome. */
            if (!t->decided)
                txn_decide(s, PGSINK_NOT_COMMITTED, NULL, "pipeline aborted");
        } else if (t->pipe_step != 0 || (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)) {
            set_error(l, "unexpected result in the transaction's pipeline");
            rc = -1;
        }
        PQclear(res);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ROLLBACK: its result and NULL. */
static int txn_read_rollback(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    assert(l->phase == PGSINK_PHASE_ROLLBACK && s->txn.active && s->txn.decided);
    for (int i = 0; !PQisBusy(l->conn); i++) {
        if (i == PGSINK_RESULTS_PER_IO_MAX) {
            l->more = true; /* bounded work per call: pgsink_tick() goes on */
            break;
        }
        PGresult *res = PQgetResult(l->conn);
        if (res == NULL)
            return txn_settle(s);
        ExecStatusType st = PQresultStatus(res);
        bool libpq_error = st == PGRES_FATAL_ERROR && result_sqlstate(res) == NULL;
        if (st == PGRES_FATAL_ERROR)
            set_error(l, PQresultErrorMessage(res));
        PQclear(res);
        if (libpq_error)
            return -1;
    }
    return 0;
}

/* IDLE: nothing is expected; drain what arrives (libpq reports stray messages itself). */
static int idle_read(struct pgsink_conn *l)
{
    for (int i = 0; !PQisBusy(l->conn); i++) {
        if (i == PGSINK_RESULTS_PER_IO_MAX) {
            l->more = true; /* bounded work per call: pgsink_tick() goes on */
            break;
        }
        PGresult *res = PQgetResult(l->conn);
        if (res == NULL)
            break;
        PQclear(res);
    }
    return 0;
}

/* Moves the data link as far as it goes without waiting. Returns -1 if the link failed. */
static int data_progress(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    for (int step = 0; step < PGSINK_STEPS_PER_IO_MAX; step++) {
        enum pgsink_phase before = l->phase;
        if (l->want_write && before != PGSINK_PHASE_COPY && link_flush(l) < 0)
            return -1;
        int rc = 0;
        switch (before) {
        case PGSINK_PHASE_IDLE:
            rc = idle_read(l);
            break;
        case PGSINK_PHASE_BEGIN:
            rc = txn_read_begin(s);
            break;
        case PGSINK_PHASE_COPY:
            rc = txn_stream(s);
            break;
        case PGSINK_PHASE_COPY_END:
            rc = txn_read_copy_end(s);
            break;
        case PGSINK_PHASE_PIPELINE:
            rc = txn_read_pipeline(s);
            break;
        case PGSINK_PHASE_ROLLBACK:
            rc = txn_read_rollback(s);
            break;
        default:
            return 0;
        }
        if (rc < 0)
            return -1;
        if (l->phase == before)
            return 0;
    }
    l->more = true;
    return 0;
}

/* ---- the control link --------------------------------------------------------------------- */

static struct pgsink_query_slot *ctl_slot(struct pgsink *s, uint32_t i)
{
    return &s->ctl[(s->ctl_head + i) % s->queries_max];
}

/* Results arrive as: result, NULL, PIPELINE_SYNC per query. The head query's slot is freed
 * when its result is delivered, so its callback may send the next query at once. */
static int control_progress(struct pgsink *s)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_CONTROL];
    assert(link_up(l) && s->ctl_len <= s->queries_max);
    if (l->want_write && link_flush(l) < 0)
        return -1;
    uint32_t bound = 3 * s->queries_max + 3;
    for (uint32_t i = 0; !PQisBusy(l->conn); i++) {
        if (s->ctl_len == 0 && s->ctl_syncs_owed == 0)
            break;
        if (i == bound) {
            l->more = true;
            break;
        }
        PGresult *res = PQgetResult(l->conn);
        if (res == NULL)
            continue;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            if (s->ctl_syncs_owed == 0) {
                set_error(l, "pipeline sync without a query");
                return -1;
            }
            s->ctl_syncs_owed--;
            continue;
        }
        if (st == PGRES_FATAL_ERROR && result_sqlstate(res) == NULL) {
            set_error(l, PQresultErrorMessage(res));
            PQclear(res);
            return -1; /* libpq's own: the link is gone; link_down answers the queries */
        }
        if (s->ctl_len == 0 || s->ctl_syncs_owed > 0) {
            PQclear(res);
            set_error(l, "control result out of order");
            return -1;
        }
        struct pgsink_query_slot *q = ctl_slot(s, 0);
        void *cookie = q->cookie;
        s->ctl_head = (s->ctl_head + 1) % s->queries_max;
        s->ctl_len--;
        s->ctl_syncs_owed++;
        s->counters.queries_answered++;
        if (st == PGRES_FATAL_ERROR || st == PGRES_NONFATAL_ERROR || st == PGRES_PIPELINE_ABORTED) {
            s->counters.queries_failed++;
            set_error(l, PQresultErrorMessage(res));
        }
        s->cb.on_query_done(s->user, cookie, res, 0);
        PQclear(res);
    }
    if (link_up(l))
        l->phase = s->ctl_len > 0 || s->ctl_syncs_owed > 0 ? PGSINK_PHASE_BUSY : PGSINK_PHASE_IDLE;
    return 0;
}

/* ---- losing a link ------------------------------------------------------------------------ */

static void link_down(struct pgsink *s, enum pgsink_link link, uint64_t now_ms, int query_err)
{
    struct pgsink_conn *l = &s->links[link];
    bool was_up = link_up(l);
    if (l->phase == PGSINK_PHASE_CONNECTING) {
        connect_failed(s, link, now_ms);
        return;
    }
    if (l->phase == PGSINK_PHASE_DOWN)
        return;
    link_close(s, l, now_ms);
    if (link == PGSINK_LINK_DATA) {
        if (was_up)
            s->counters.disconnects++;
        if (was_up && s->cb.on_state)
            s->cb.on_state(s->user, link, false);
        struct pgsink_txn_state *t = &s->txn;
        if (t->active) {
            if (t->commit_queued)
                txn_decide(s, PGSINK_UNKNOWN, NULL, l->rc.error);
            else
                txn_decide(s, PGSINK_NOT_COMMITTED, NULL, l->rc.error);
            txn_deliver(s);
        }
        return;
    }
    if (was_up)
        s->counters.control_disconnects++;
    if (was_up && s->cb.on_state)
        s->cb.on_state(s->user, link, false);
    /* Take the whole ring first: a callback may already send on the next link. */
    uint32_t head = s->ctl_head, len = s->ctl_len;
    s->ctl_head = 0;
    s->ctl_len = 0;
    s->ctl_syncs_owed = 0;
    for (uint32_t i = 0; i < len; i++) {
        void *cookie = s->ctl[(head + i) % s->queries_max].cookie;
        s->counters.queries_lost++;
        s->cb.on_query_done(s->user, cookie, NULL, i == 0 ? query_err : -ECONNRESET);
    }
}

/* ---- public ------------------------------------------------------------------------------- */

/* Why cfg is refused, or NULL. */
static const char *config_error(const struct pgsink_config *cfg)
{
    if (cfg == NULL || cfg->conninfo == NULL)
        return "conninfo missing";
    if (cfg->cb.on_txn_done == NULL)
        return "on_txn_done missing";
    if (cfg->queries_max > 0 && cfg->cb.on_query_done == NULL)
        return "on_query_done missing (queries_max > 0)";
    if (cfg->state_sql != NULL &&
        (cfg->state_nparams < 0 || cfg->state_nparams > PGSINK_STATE_PARAMS_MAX))
        return "state_nparams out of range";
    if (cfg->queries_max > 65536)
        return "queries_max above 65536";
    return reconnect_config_error(cfg->backoff_min_ms, cfg->backoff_max_ms);
}

struct pgsink *pgsink_create(const struct pgsink_config *cfg, char *err, size_t err_cap)
{
    const char *why = config_error(cfg);
    if (why) {
        if (err && err_cap > 0)
            snprintf(err, err_cap, "pgsink: %s", why);
        errno = EINVAL;
        return NULL;
    }

    struct pgsink *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    const char *copy_sql = cfg->copy_sql ? cfg->copy_sql : PGSINK_COPY_SQL_DEFAULT;
    s->conninfo = dup_str(cfg->conninfo);
    s->state_sql = dup_str(cfg->state_sql ? cfg->state_sql : PGSINK_STATE_SQL_DEFAULT);
    s->copy_sql = dup_str(copy_sql);
    s->begin_sql_cap = sizeof PGSINK_BEGIN_FMT + 2 * 10 + strlen(copy_sql);
    s->begin_sql = malloc(s->begin_sql_cap);
    if (!s->conninfo || !s->state_sql || !s->copy_sql || !s->begin_sql)
        goto nomem;
    s->state_nparams = cfg->state_sql ? cfg->state_nparams : PGSINK_STATE_NPARAMS_DEFAULT;
    s->queries_max = cfg->queries_max;
    if (s->queries_max > 0) {
        s->ctl = calloc(s->queries_max, sizeof(*s->ctl));
        if (s->ctl == NULL)
            goto nomem;
    }
    reconnect_policy_init(&s->reconnect, cfg->backoff_min_ms, cfg->backoff_max_ms,
                          cfg->connect_timeout_ms ? cfg->connect_timeout_ms
                                                  : PGSINK_CONNECT_TIMEOUT_MS_DEFAULT,
                          cfg->seed, s);
    s->txn_timeout_ms = cfg->txn_timeout_ms;
    s->query_timeout_ms = cfg->query_timeout_ms;
    s->copy_bytes_per_io =
        cfg->copy_bytes_per_io ? cfg->copy_bytes_per_io : PGSINK_COPY_BYTES_PER_IO_DEFAULT;
    s->cb = cfg->cb;
    s->user = cfg->user;
    for (int i = 0; i < PGSINK_LINKS; i++) {
        s->links[i].fd = -1;
        s->links[i].phase = PGSINK_PHASE_DOWN;
        s->links[i].rc.retry_at_ms = 0; /* the first tick connects */
    }
    return s;
nomem:
    if (s) {
        free(s->conninfo);
        free(s->state_sql);
        free(s->copy_sql);
        free(s->begin_sql);
        free(s->ctl);
        free(s);
    }
    if (err && err_cap > 0)
        snprintf(err, err_cap, "pgsink: out of memory");
    errno = ENOMEM;
    return NULL;
}

void pgsink_destroy(struct pgsink *s)
{
    if (s == NULL)
        return;
    struct pgsink_txn_state *t = &s->txn;
    if (t->active) {
        if (t->commit_queued)
            txn_decide(s, PGSINK_UNKNOWN, NULL, "sink destroyed");
        else
            txn_decide(s, PGSINK_NOT_COMMITTED, NULL, "sink destroyed");
        txn_deliver(s);
    }
    uint32_t head = s->ctl_head, len = s->ctl_len;
    s->ctl_len = 0;
    for (uint32_t i = 0; i < len; i++) {
        s->counters.queries_lost++;
        s->cb.on_query_done(s->user, s->ctl[(head + i) % s->queries_max].cookie, NULL, -ECANCELED);
    }
    for (int i = 0; i < PGSINK_LINKS; i++)
        if (s->links[i].conn)
            PQfinish(s->links[i].conn);
    free(s->conninfo);
    free(s->state_sql);
    free(s->copy_sql);
    free(s->begin_sql);
    free(s->ctl);
    free(s);
}

static bool link_enabled(const struct pgsink *s, enum pgsink_link link)
{
    return link == PGSINK_LINK_DATA || s->queries_max > 0;
}

int pgsink_fd(const struct pgsink *s, enum pgsink_link link)
{
    assert(link < PGSINK_LINKS);
    return s->links[link].phase == PGSINK_PHASE_DOWN ? -1 : s->links[link].fd;
}

uint32_t pgsink_fd_epoch(const struct pgsink *s, enum pgsink_link link)
{
    assert(link < PGSINK_LINKS);
    return s->links[link].epoch;
}

short pgsink_events(const struct pgsink *s, enum pgsink_link link)
{
    assert(link < PGSINK_LINKS);
    const struct pgsink_conn *l = &s->links[link];
    switch (l->phase) {
    case PGSINK_PHASE_DOWN:
        return 0;
    case PGSINK_PHASE_CONNECTING:
        return l->connect_events;
    case PGSINK_PHASE_COPY:
        return POLLIN | POLLOUT; /* more data to hand over: the socket decides when */
    default:
        return (short)(POLLIN | (l->want_write ? POLLOUT : 0));
    }
}

uint64_t pgsink_next_deadline_ms(const struct pgsink *s)
{
    uint64_t d = UINT64_MAX;
    for (int i = 0; i < PGSINK_LINKS; i++) {
        const struct pgsink_conn *l = &s->links[i];
        if (!link_enabled(s, (enum pgsink_link)i))
            continue;
        if (l->broken || l->more)
            return 0;
        if (l->phase == PGSINK_PHASE_DOWN && l->rc.retry_at_ms < d)
            d = l->rc.retry_at_ms;
        if (l->phase == PGSINK_PHASE_CONNECTING && l->rc.connect_deadline_ms < d)
            d = l->rc.connect_deadline_ms;
    }
    if (s->txn.active && s->txn.deadline_ms < d)
        d = s->txn.deadline_ms;
    if (s->ctl_len > 0 && s->query_timeout_ms > 0) {
        uint64_t q = s->ctl[s->ctl_head].sent_ms + s->query_timeout_ms;
        if (q < d)
            d = q;
    }
    return d;
}

/* Moves a connected link as far as it goes, then drops it if it failed. */
static void link_progress(struct pgsink *s, enum pgsink_link link, bool read_ok, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[link];
    l->more = false;
    int rc = link == PGSINK_LINK_DATA ? data_progress(s) : control_progress(s);
    if (l->phase == PGSINK_PHASE_DOWN)
        return; /* a callback's call already dropped it */
    if (rc < 0 || !read_ok || PQstatus(l->conn) == CONNECTION_BAD)
        link_down(s, link, now_ms, -ECONNRESET);
}

void pgsink_on_io(struct pgsink *s, enum pgsink_link link, short revents, uint64_t now_ms)
{
    assert(link < PGSINK_LINKS);
    struct pgsink_conn *l = &s->links[link];
    if (l->phase == PGSINK_PHASE_DOWN)
        return; /* a completion for a socket already closed */
    if (l->phase == PGSINK_PHASE_CONNECTING) {
        connect_poll(s, link, now_ms);
        return;
    }
    /* Read what the socket has before deciding anything: a COMMIT result may sit in front of
     * the EOF that PQconsumeInput reports. A pure POLLOUT wake-up (the COPY's usual one) needs
     * no read. */
    bool read_ok = true;
    if (revents == 0 || (revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        read_ok = PQconsumeInput(l->conn) == 1;
        if (!read_ok)
            set_error(l, PQerrorMessage(l->conn));
    }
    link_progress(s, link, read_ok, now_ms);
}

void pgsink_tick(struct pgsink *s, uint64_t now_ms)
{
    for (int i = 0; i < PGSINK_LINKS; i++) {
        enum pgsink_link link = (enum pgsink_link)i;
        struct pgsink_conn *l = &s->links[i];
        if (!link_enabled(s, link))
            continue;
        if (l->broken) {
            link_down(s, link, now_ms, -ECONNRESET);
            continue;
        }
        if (l->more && link_up(l))
            link_progress(s, link, true, now_ms);
        if (l->phase == PGSINK_PHASE_DOWN && now_ms >= l->rc.retry_at_ms)
            connect_start(s, link, now_ms);
        else if (l->phase == PGSINK_PHASE_CONNECTING && now_ms >= l->rc.connect_deadline_ms) {
            set_error(l, "connect timed out");
            connect_failed(s, link, now_ms);
        }
    }
    if (s->txn.active && now_ms >= s->txn.deadline_ms) {
        struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
        s->counters.txn_timeouts++;
        set_error(l, "transaction timed out");
        link_down(s, PGSINK_LINK_DATA, now_ms, -ECONNRESET);
    }
    if (s->ctl_len > 0 && s->query_timeout_ms > 0 &&
        now_ms >= s->ctl[s->ctl_head].sent_ms + s->query_timeout_ms) {
        set_error(&s->links[PGSINK_LINK_CONTROL], "control query timed out");
        link_down(s, PGSINK_LINK_CONTROL, now_ms, -ETIMEDOUT);
    }
}

/* What libpq would refuse only once the transaction is half sent (or, for a negative length,
 * misread): checked at submit, where nothing has been sent yet. */
static bool state_formats_valid(const struct pgsink *s, const struct pgsink_txn *txn)
{
    if (txn->state_params == NULL || txn->state_formats == NULL)
        return true;
    for (int i = 0; i < s->state_nparams; i++) {
        int f = txn->state_formats[i];
        if (f != PGSINK_FORMAT_TEXT && f != PGSINK_FORMAT_BINARY)
            return false;
        if (f == PGSINK_FORMAT_BINARY && txn->state_params[i] != NULL &&
            (txn->state_lengths == NULL || txn->state_lengths[i] < 0))
            return false;
    }
    return true;
}

/* The transaction's first query into s->begin_sql: BEGIN, the timeouts it asks for, the COPY.
 * (SET LOCAL takes no parameters; the values are numbers the sink formats itself.) */
static void begin_sql(struct pgsink *s, const struct pgsink_txn *txn)
{
    char *o = s->begin_sql;
    size_t cap = s->begin_sql_cap;
    int n = snprintf(o, cap, "BEGIN;");
    if (txn->statement_timeout_ms)
        n += snprintf(o + n, cap - (size_t)n, "SET LOCAL statement_timeout = %u;",
                      txn->statement_timeout_ms);
    if (txn->lock_timeout_ms)
        n += snprintf(o + n, cap - (size_t)n, "SET LOCAL lock_timeout = %u;", txn->lock_timeout_ms);
    n += snprintf(o + n, cap - (size_t)n, "%s", s->copy_sql);
    assert(n > 0 && (size_t)n < cap);
}

int pgsink_submit(struct pgsink *s, const struct pgsink_txn *txn, void *cookie, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    struct pgsink_txn_state *t = &s->txn;
    if (!link_up(l) || l->broken)
        return -ENOTCONN;
    if (t->active)
        return -EBUSY;
    assert(l->phase == PGSINK_PHASE_IDLE);
    if (txn == NULL || txn->copy_iovs < 0 || (txn->copy_iovs > 0 && txn->copy == NULL) ||
        !state_formats_valid(s, txn))
        return -EINVAL;
    begin_sql(s, txn);
    if (PQtransactionStatus(l->conn) != PQTRANS_IDLE || !PQsendQuery(l->conn, s->begin_sql)) {
        set_error(l, PQerrorMessage(l->conn));
        l->broken = true; /* the next tick drops and reconnects */
        return -ENOTCONN;
    }
    memset(t, 0, sizeof(*t));
    t->active = true;
    t->cookie = cookie;
    t->txn = *txn;
    t->copy_rows = -1;
    t->backend_pid = l->backend_pid;
    t->deadline_ms = s->txn_timeout_ms ? now_ms + s->txn_timeout_ms : UINT64_MAX;
    l->phase = PGSINK_PHASE_BEGIN;
    s->counters.txns_submitted++;
    if (link_flush(l) < 0)
        l->broken = true; /* reported as NOT_COMMITTED from the next tick */
    return 0;
}

int pgsink_query(struct pgsink *s, const char *sql, int nparams, const char *const *params,
                 void *cookie, uint64_t now_ms)
{
    struct pgsink_conn *l = &s->links[PGSINK_LINK_CONTROL];
    if (s->queries_max == 0 || !link_up(l) || l->broken)
        return -ENOTCONN;
    if (sql == NULL || nparams < 0 || nparams > PGSINK_QUERY_PARAMS_MAX ||
        (nparams > 0 && params == NULL))
        return -EINVAL;
    if (s->ctl_len == s->queries_max)
        return -ENOBUFS;
    if (!PQsendQueryParams(l->conn, sql, nparams, NULL, params, NULL, NULL, 0)) {
        set_error(l, PQerrorMessage(l->conn));
        l->broken = true;
        return -ENOTCONN;
    }
    struct pgsink_query_slot *q = ctl_slot(s, s->ctl_len);
    q->cookie = cookie;
    q->sent_ms = now_ms;
    s->ctl_len++;
    s->counters.queries_submitted++;
    l->phase = PGSINK_PHASE_BUSY;
    if (!PQpipelineSync(l->conn) || link_flush(l) < 0) {
        set_error(l, PQerrorMessage(l->conn));
        l->broken = true; /* the query is in the ring: answered with -ECONNRESET */
    }
    return 0;
}

bool pgsink_ready(const struct pgsink *s)
{
    const struct pgsink_conn *l = &s->links[PGSINK_LINK_DATA];
    return l->phase == PGSINK_PHASE_IDLE && !l->broken && !s->txn.active;
}

enum pgsink_phase pgsink_phase(const struct pgsink *s, enum pgsink_link link)
{
    assert(link < PGSINK_LINKS);
    return s->links[link].phase;
}

int pgsink_backend_pid(const struct pgsink *s, enum pgsink_link link)
{
    assert(link < PGSINK_LINKS);
    return link_up(&s->links[link]) ? s->links[link].backend_pid : 0;
}

const char *pgsink_last_error(const struct pgsink *s, enum pgsink_link link)
{
    assert(link < PGSINK_LINKS);
    return s->links[link].rc.error;
}

const struct pgsink_counters *pgsink_counters(const struct pgsink *s)
{
    return &s->counters;
}

const char *pgsink_outcome_name(enum pgsink_outcome o)
{
    switch (o) {
    case PGSINK_COMMITTED:
        return "committed";
    case PGSINK_NOT_COMMITTED:
        return "not_committed";
    case PGSINK_UNKNOWN:
        return "unknown";
    case PGSINK_DATA_ERROR:
        return "data_error";
    }
    return "invalid";
}
