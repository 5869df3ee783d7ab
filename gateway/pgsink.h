/* pgsink.h — one shard's PostgreSQL connections for ingest: non-blocking libpq, driven by the
 * caller's readiness events.
 *
 * A sink owns two links to the same database:
 *
 *   PGSINK_LINK_DATA     the ingest transactions, one at a time: BEGIN + COPY ... FROM STDIN
 *                        (BINARY) as one simple query, the COPY data, then in pipeline mode the
 *                        device-state statement and COMMIT behind one sync.
 *   PGSINK_LINK_CONTROL  small look-ups (a device's state when it connects, pending commands,
 *                        partition maintenance), permanently in pipeline mode, each query
 *                        behind its own sync so one failure does not abort the next. Optional:
 *                        cfg.queries_max == 0 opens no control link.
 *
 * Why two links: a look-up must not wait behind a multi-megabyte COPY (a device's first packet
 * waits for its state), and a look-up's failure or slowness must not touch the transaction
 * whose outcome decides ACKs. The cost is one more backend per shard.
 *
 * Nothing blocks after pgsink_create() and nothing is allocated by the sink after it; libpq
 * allocates its connection objects and results (and its buffers: the sink bounds what it puts
 * into them). DNS: give an address (hostaddr=, or an IP in host=) in the conninfo — libpq
 * resolves host names with blocking getaddrinfo() at every connect attempt.
 *
 * Driving it (one thread, the shard's; no function here is thread-safe):
 *
 *   for each link: fd = pgsink_fd(s, link), events = pgsink_events(s, link);
 *                  when fd >= 0 and events != 0, poll fd for events;
 *                  when the link's pgsink_fd_epoch() changed, drop the old poll first
 *   on readiness:  pgsink_on_io(s, link, revents, now_ms)
 *   timer:         at pgsink_next_deadline_ms(s) (a CLOCK_MONOTONIC ms value), pgsink_tick()
 *
 * Re-read fd, events, epoch and the deadline after every call into the sink (on_io, tick,
 * submit, query): any of them may change. The socket of a link changes across reconnects and
 * even during one connect attempt (libpq may close and reopen it, e.g. for sslmode=prefer or a
 * host list); the same fd number may then name a new socket, so compare the epoch, not the fd.
 * An io_uring poll armed on a socket that libpq has since closed keeps that socket alive and
 * never fires: cancel it when the epoch moves.
 *
 * Callbacks run only from pgsink_on_io(), pgsink_tick() and pgsink_destroy(); never from
 * pgsink_create(), pgsink_submit() or pgsink_query(). A callback may call pgsink_submit() and
 * pgsink_query() (the sink is consistent when it calls out) but not pgsink_destroy().
 */
#ifndef AVLGATE_GATEWAY_PGSINK_H
#define AVLGATE_GATEWAY_PGSINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include <libpq-fe.h>

#include "codec/bytes.h"
#include "gateway/copyenc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The defaults for the two statements of a transaction. The COPY is the one the row encoder
 * writes its tuples for (one column list, kept in gateway/copyenc.h). The state statement's
 * casts give each parameter its type, so any of them may be sent in binary format. */
#define PGSINK_COPY_SQL_DEFAULT copyenc_copy_sql(COPYENC_ARRAYS)
#define PGSINK_STATE_SQL_DEFAULT                                                                   \
    "SELECT telemetry.device_state_upsert_owned($1::bigint[], $2::bigint[], $3::bigint[], "        \
    "$4::integer[], $5::integer[], $6::bytea[], $7::text, $8::integer, $9::bigint[])"
#define PGSINK_STATE_NPARAMS_DEFAULT 9

enum {
    PGSINK_QUERY_PARAMS_MAX = 16,        /* parameters of one control query */
    PGSINK_STATE_PARAMS_MAX = 64,        /* parameters of the device-state statement */
    PGSINK_MESSAGE_BYTES = 256,          /* error text kept for a result (truncated) */
    PGSINK_COPY_CHUNK_BYTES = 64 * 1024, /* COPY data handed to libpq between two flushes */
};

enum pgsink_link {
    PGSINK_LINK_DATA = 0,
    PGSINK_LINK_CONTROL = 1,
    PGSINK_LINKS = 2,
};

/* The outcome of one submitted transaction; exactly one per successful pgsink_submit(). */
enum pgsink_outcome {
    /* The server answered COMMIT with COMMIT. */
    PGSINK_COMMITTED = 1,
    /* Certainly not committed: it failed or the link broke before COMMIT was queued, a
     * statement before COMMIT failed (which aborts the pipeline, so COMMIT never ran), or the
     * server answered COMMIT with ROLLBACK or a non-fatal error. Safe to send again. sqlstate
     * is the server's when it answered with an error, else "". */
    PGSINK_NOT_COMMITTED = 2,
    /* COMMIT was queued to libpq (its bytes may have reached the server) and no answer to it
     * or to a statement before it came back: the link broke, the transaction timed out, or
     * the server ended the session (FATAL) while executing COMMIT. It may have committed,
     * possibly even later (a backend that has not noticed the broken link still runs it).
     * Never send this batch again. */
    PGSINK_UNKNOWN = 3,
    /* The server rejected the data: SQLSTATE class 22 (data exception) or 23 (integrity
     * constraint violation), from the COPY, the state statement or a deferred constraint at
     * COMMIT. Rolled back; sqlstate says which. The caller isolates the bad rows. */
    PGSINK_DATA_ERROR = 4,
};

/* What the sink knows about a finished transaction. Valid during on_txn_done only. */
struct pgsink_txn_result {
    enum pgsink_outcome outcome;
    char sqlstate[6];    /* five characters and NUL, or "" */
    const char *message; /* the server's or libpq's first error line, or "" */
    int64_t copy_rows;   /* rows the server reported for the COPY, -1 if it did not answer */
    int backend_pid;     /* the server process that ran it (0 if unknown): after UNKNOWN, the
                            transaction cannot commit any more once this process is gone */
    /* NOT_COMMITTED because the server cancelled a statement: statement_timeout (57014, also
     * a cancel request) or lock_timeout (55P03). The data is not at fault; what it waited for
     * (a row lock held elsewhere, a stalled disk) was. */
    bool timed_out;
};

struct pgsink_callbacks {
    /* A transaction finished: called once per accepted pgsink_submit(), when the data link is
     * ready for the next one (idle again) or down. */
    void (*on_txn_done)(void *user, void *cookie, const struct pgsink_txn_result *res);
    /* A control query finished. res is the server's answer (check PQresultStatus(): tuples,
     * command OK, or an error with its PG_DIAG_SQLSTATE); it belongs to the sink and is freed
     * when the callback returns. res is NULL when no answer came: err is then -ECONNRESET (the
     * link broke; the query may or may not have run), -ETIMEDOUT (no answer within
     * cfg.query_timeout_ms; the link is dropped) or -ECANCELED (pgsink_destroy()). */
    void (*on_query_done)(void *user, void *cookie, const PGresult *res, int err);
    /* A link came up (after its session is set up) or went down (an established link broke;
     * failed connect attempts are only counted). May be NULL. */
    void (*on_state)(void *user, enum pgsink_link link, bool connected);
};

struct pgsink_config {
    const char *conninfo;        /* libpq conninfo or URI; copied */
    const char *copy_sql;        /* NULL: PGSINK_COPY_SQL_DEFAULT; copied */
    const char *state_sql;       /* NULL: PGSINK_STATE_SQL_DEFAULT with its 9 parameters; copied */
    int state_nparams;           /* parameters of a given state_sql, 0..PGSINK_STATE_PARAMS_MAX */
    uint32_t backoff_min_ms;     /* first reconnect delay; 0: 100 */
    uint32_t backoff_max_ms;     /* delay ceiling, also how long a link must stay up for the
                                    delay to start again from the minimum; 0: 5000 */
    uint32_t connect_timeout_ms; /* a connect attempt that takes longer fails; 0: 10000 */
    uint32_t txn_timeout_ms;     /* a transaction without its outcome this long after submit
                                    drops the data link (outcome by the rules above); 0: none.
                                    Prefer the server's timeouts (struct pgsink_txn): this is
                                    the backstop for what they do not cover (a COMMIT waiting
                                    for a synchronous standby, a server that stopped answering) */
    uint32_t query_timeout_ms;   /* same for the oldest control query in flight; 0: none */
    uint32_t queries_max;        /* control queries in flight; 0: no control link */
    uint32_t copy_bytes_per_io;  /* COPY bytes handed to libpq per pgsink_on_io() before
                                    yielding to the caller's loop; 0: 1 MiB */
    uint64_t seed;               /* backoff jitter; 0: drawn from the clock */
    struct pgsink_callbacks cb;
    void *user; /* passed to every callback */
};

/* Per-sink counters, written by the sink only. Read them on the sink's thread. */
struct pgsink_counters {
    uint64_t connects;         /* data link established */
    uint64_t connect_failures; /* data link attempts that failed or timed out */
    uint64_t disconnects;      /* established data link lost or dropped */
    uint64_t txns_submitted;
    uint64_t txns_committed;
    uint64_t txns_not_committed;
    uint64_t txns_unknown;
    uint64_t txns_data_error;
    uint64_t txn_timeouts;   /* the client-side txn_timeout_ms ran out (link dropped) */
    uint64_t txns_timed_out; /* NOT_COMMITTED with timed_out: the server cancelled a statement */
    uint64_t rollbacks;      /* ROLLBACKs sent to bring a failed transaction back to idle */
    uint64_t copy_bytes;     /* COPY data bytes handed to libpq */
    uint64_t copy_rows;      /* rows of committed transactions, as the server counted them */
    uint64_t write_waits;    /* times the data link waited for the socket to drain */
    uint64_t notices;        /* notices and warnings from the server, both links */
    uint64_t control_connects;
    uint64_t control_connect_failures;
    uint64_t control_disconnects;
    uint64_t queries_submitted;
    uint64_t queries_answered; /* the server answered (success or an SQL error) */
    uint64_t queries_failed;   /* answered with an error */
    uint64_t queries_lost;     /* no answer: link lost, timeout or destroy */
};

/* Where a link is. For diagnostics and tests; the driving loop needs only fd/events. */
enum pgsink_phase {
    PGSINK_PHASE_DOWN = 0,   /* no connection; waiting for the backoff deadline */
    PGSINK_PHASE_CONNECTING, /* PQconnectPoll in progress */
    PGSINK_PHASE_IDLE,       /* connected; data: no transaction; control: nothing in flight */
    PGSINK_PHASE_BEGIN,      /* data: BEGIN + COPY sent, waiting for COPY IN */
    PGSINK_PHASE_COPY,       /* data: streaming the COPY data */
    PGSINK_PHASE_COPY_END,   /* data: end of data sent, waiting for the COPY's result */
    PGSINK_PHASE_PIPELINE,   /* data: state statement + COMMIT + sync sent, collecting */
    PGSINK_PHASE_ROLLBACK,   /* data: ROLLBACK after an error, waiting for it */
    PGSINK_PHASE_BUSY,       /* control: queries in flight */
};

/* One transaction. Everything it points to (the iovec array, the bytes, the parameter
 * values, lengths and formats) must stay valid and unchanged until on_txn_done: the sink
 * sends lazily. */
struct pgsink_txn {
    const struct iovec *copy; /* the whole COPY BINARY stream: header, tuples, trailer */
    int copy_iovs;
    /* cfg.state_nparams values (a NULL entry is SQL NULL), or NULL to run no state statement
     * in this transaction. */
    const char *const *state_params;
    /* Per parameter, as PQsendQueryParams takes them: its format (PGSINK_FORMAT_TEXT, a
     * NUL-terminated string; PGSINK_FORMAT_BINARY, the type's binary send format) and, for a
     * binary one, its length in bytes. state_formats NULL: every value is text (and
     * state_lengths is not read). A binary value gets its type from the statement (a cast such
     * as $1::bigint[]), so its bytes must be that type's. */
    const int *state_lengths;
    const int *state_formats;
    /* The server's timeouts for this transaction's statements, set with SET LOCAL in its first
     * query (so they end with it); 0 keeps the session's setting. statement_timeout bounds
     * each statement (the COPY, the state statement) including lock waits; lock_timeout bounds
     * a single lock wait. A statement they cancel rolls the transaction back: NOT_COMMITTED
     * with timed_out. Neither bounds COMMIT's wait for a synchronous standby (the server
     * disarms statement_timeout before it commits): cfg.txn_timeout_ms does. */
    uint32_t statement_timeout_ms;
    uint32_t lock_timeout_ms;
};

/* ---- binary parameter values -------------------------------------------------------------
 * Writers of PostgreSQL's binary formats for state parameters, all integers big-endian:
 *   int4, int8       the value (4, 8 bytes)
 *   one-dimensional  ndim (1), has-null flag (0/1), element type OID, the length, the lower
 *   array            bound (1); then per element its length in bytes (int32, -1 for NULL)
 *                    followed by the element's own binary value (array_send's layout)
 * Each writer stores at o, which must have room for what it writes (the _BYTES constants),
 * and returns the position after it. Plain stores: no allocation, no locale, no stdio. */
enum {
    PGSINK_FORMAT_TEXT = 0,
    PGSINK_FORMAT_BINARY = 1,
    PGSINK_OID_BYTEA = 17,
    PGSINK_OID_INT8 = 20,
    PGSINK_OID_INT4 = 23,
    PGSINK_ARRAY_HEADER_BYTES = 5 * 4, /* ndim, flags, element type, length, lower bound */
    PGSINK_ARRAY_NULL_BYTES = 4,       /* a NULL element: its length, -1 */
    PGSINK_ARRAY_INT4_BYTES = 4 + 4,   /* an int4 element with its length */
    PGSINK_ARRAY_INT8_BYTES = 4 + 8,   /* an int8 element with its length */
    PGSINK_ARRAY_ELEM_BYTES = 4,       /* the length in front of a variable-size element */
};

static inline uint8_t *pgsink_put_be32(uint8_t *o, uint32_t v)
{
    put_be32(o, v);
    return o + 4;
}

static inline uint8_t *pgsink_put_be64(uint8_t *o, uint64_t v)
{
    put_be64(o, v);
    return o + 8;
}

/* The header of a one-dimensional array of n elements of type elem_oid, without NULLs (until
 * pgsink_array_null says otherwise). n == 0 is the empty array. */
static inline uint8_t *pgsink_array_begin(uint8_t *o, uint32_t elem_oid, uint32_t n)
{
    o = pgsink_put_be32(o, 1); /* ndim */
    o = pgsink_put_be32(o, 0); /* has-null */
    o = pgsink_put_be32(o, elem_oid);
    o = pgsink_put_be32(o, n);
    return pgsink_put_be32(o, 1); /* lower bound */
}

/* A NULL element of the array whose header pgsink_array_begin wrote at array. */
static inline uint8_t *pgsink_array_null(uint8_t *array, uint8_t *o)
{
    pgsink_put_be32(array + 4, 1);
    return pgsink_put_be32(o, UINT32_MAX);
}

static inline uint8_t *pgsink_array_int4(uint8_t *o, int32_t v)
{
    o = pgsink_put_be32(o, 4);
    return pgsink_put_be32(o, (uint32_t)v);
}

static inline uint8_t *pgsink_array_int8(uint8_t *o, int64_t v)
{
    o = pgsink_put_be32(o, 8);
    return pgsink_put_be64(o, (uint64_t)v);
}

/* The length of a variable-size element (bytea: its bytes follow, written by the caller). */
static inline uint8_t *pgsink_array_elem(uint8_t *o, uint32_t bytes)
{
    return pgsink_put_be32(o, bytes);
}

struct pgsink;

/* Validates cfg and allocates the sink (copies of the strings, the control query slots).
 * Connects nothing: the first pgsink_tick() does (the deadline starts at 0). Returns NULL with
 * errno EINVAL (bad config; a reason is written to err when err_cap > 0) or ENOMEM. */
struct pgsink *pgsink_create(const struct pgsink_config *cfg, char *err, size_t err_cap);

/* Closes both links and frees the sink. A transaction still in flight is reported through
 * on_txn_done (NOT_COMMITTED or UNKNOWN by the rules above) and queued or in-flight control
 * queries through on_query_done(-ECANCELED), from inside this call. NULL is a no-op. */
void pgsink_destroy(struct pgsink *s);

/* The socket of the link, or -1 while it has none (down, waiting for the backoff timer). */
int pgsink_fd(const struct pgsink *s, enum pgsink_link link);

/* Incremented whenever the link's socket may have changed (connect attempt, reconnect inside
 * PQconnectPoll, close). Re-arm the poll when it differs from the value the poll was armed
 * with. */
uint32_t pgsink_fd_epoch(const struct pgsink *s, enum pgsink_link link);

/* The poll events the link waits for now: POLLIN, POLLOUT or both; 0 while it has no socket. */
short pgsink_events(const struct pgsink *s, enum pgsink_link link);

/* The earliest CLOCK_MONOTONIC ms at which pgsink_tick() must run (reconnect backoff, connect
 * and transaction timeouts), 0 for "now", UINT64_MAX for never. */
uint64_t pgsink_next_deadline_ms(const struct pgsink *s);

/* Readiness (or POLLERR/POLLHUP) on the link's socket. revents may be 0 (spurious wake-ups are
 * harmless). now_ms is the caller's CLOCK_MONOTONIC ms, used for backoff and timeouts. */
void pgsink_on_io(struct pgsink *s, enum pgsink_link link, short revents, uint64_t now_ms);

/* Runs what is due at now_ms: connect attempts after backoff, timeouts. Cheap when nothing is
 * due; calling it more often than the deadline asks is harmless. */
void pgsink_tick(struct pgsink *s, uint64_t now_ms);

/* Starts one transaction (see struct pgsink_txn for the lifetime of its data). Returns 0: the
 * sink owns it until on_txn_done, called exactly once; -ENOTCONN: the data link is not up;
 * -EBUSY: a transaction is in flight (on_txn_done not yet called for it); -EINVAL: a bad txn
 * (no COPY iovecs where copy_iovs says some; a format other than text or binary; a binary
 * parameter without state_lengths or with a negative length).
 * On an error nothing was sent and no callback follows. now_ms starts the txn timeout. */
int pgsink_submit(struct pgsink *s, const struct pgsink_txn *txn, void *cookie, uint64_t now_ms);

/* Sends a control query (sql with nparams text parameters $1.., a NULL entry being SQL NULL)
 * on the control link, behind its own pipeline sync: each query is its own implicit
 * transaction and an error in one does not abort the next. libpq copies sql and params before
 * this returns. Returns 0 (one on_query_done follows), -ENOTCONN (the control link is not up,
 * or there is none: queries are not held while it is down), -ENOBUFS (cfg.queries_max queries
 * in flight) or -EINVAL (nparams out of range). Queries are answered in the order sent. */
int pgsink_query(struct pgsink *s, const char *sql, int nparams, const char *const *params,
                 void *cookie, uint64_t now_ms);

/* True when pgsink_submit() would accept a transaction now. */
bool pgsink_ready(const struct pgsink *s);

/* The link's phase (diagnostics and tests). */
enum pgsink_phase pgsink_phase(const struct pgsink *s, enum pgsink_link link);

/* The server process id of the link's current session, 0 without one. */
int pgsink_backend_pid(const struct pgsink *s, enum pgsink_link link);

/* The last connection or server error seen on the link ("" if none); the sink's storage,
 * valid until the next call into the sink. For logging, rate-limited by the caller. */
const char *pgsink_last_error(const struct pgsink *s, enum pgsink_link link);

/* The sink's counters; the pointer is valid until pgsink_destroy(). */
const struct pgsink_counters *pgsink_counters(const struct pgsink *s);

/* The printable name of an outcome ("committed", "not_committed", "unknown", "data_error"). */
const char *pgsink_outcome_name(enum pgsink_outcome o);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_PGSINK_H */
