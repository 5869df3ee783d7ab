/* copyceil.c — avlgate-copyceil: the COPY ceiling, the rate at which a plain binary COPY client
 * loads the gateway's rows into the gateway's schema; also the loader of bench/rowvariants.
 *
 * The end-to-end benchmark compares the gateway's durable ingest rate with this figure, taken
 * with as many connections as the gateway has shards. Each connection (one thread, blocking
 * libpq) repeats, for --seconds:
 *
 *   BEGIN; COPY <table> (<columns>) FROM STDIN (FORMAT binary); the batch in PQputCopyData
 *   chunks; PQputCopyEnd; COMMIT
 *
 * with <table> from --table (default telemetry.positions) and <columns> copyenc_columns() of
 * --io-layout (arrays, the gateway's default; jsonb; raw: see gateway/copyenc.h).
 * The batches are the gateway's own bytes: realistic packets from loadgen/packetgen (codecs 8,
 * 8E and 16 in turn, --records-per-packet records each, --devices devices), decoded with
 * avl_decode_tcp and encoded with copyenc_row in that layout, exactly as a shard does. They are
 * made before the clock starts, a pool of --pool-batches per connection, so the client measures
 * PostgreSQL, not the generator. Each connection has its own devices (as each shard owns its
 * IMEIs). Record times are "now" (from about an hour ago, UTC), so rows land in today's daily
 * partition: for telemetry.positions made here by telemetry.ensure_partitions(7) as the gateway
 * does at start. A pool is sent over and over: before each pass every row's ts moves by one more
 * µs, so (imei, ts) stays distinct and the (imei, ts) index gets new keys, as under the gateway,
 * not runs of equal ones that btree deduplication would absorb cheaply.
 *
 * Another --table (bench/rowvariants makes one per row layout and index) must have the layout's
 * columns, which is checked before anything is timed; its partitions are the caller's to make.
 * telemetry.positions is checked as the gateway checks it (gateway/pgschema.h).
 *
 * --rows N makes it a loader of a fixed data set instead: N rows in all (connection i of C loads
 * N / C, one more when i < N % C), each a distinct record: the batches are made as they go and
 * never repeated, so the rate includes making them. It stops when they are in, or at --seconds
 * when given. With --span-h H as well, each connection's records follow a fleet's clock over the
 * H hours up to --span-end-s (Unix seconds; default now): the packet that holds a connection's
 * k-th of n rows is sent at end - H + H * k / n, its records lie in the records-per-packet x 61 s
 * before that (a record advances by less than 61 s), and received_at is the send time. So rows
 * arrive in time order, a device's records spread over the span (one packet per device every
 * H * devices * records-per-packet / N hours or so), and the same --seed, --conns, --devices,
 * --records-per-packet, --rows, --span-h and --span-end-s give the same rows in every layout.
 *
 * The ceiling is the plain COPY only. The gateway's transaction also upserts
 * public.device_state (one statement per batch) and it ACKs the trackers; none of that is
 * done here, so the gateway cannot reach this figure and the ratio says what that costs.
 *
 * Rows are counted from the COPY's command tag, and only once their COMMIT succeeded. The
 * summary's seconds run from the start until the last connection finished its last batch (a
 * batch begun before the deadline completes); client_cpu_s is this process's user + system
 * CPU over the same span. SIGINT/SIGTERM stop after the batches in flight commit (a second
 * signal ends the process at once); an error rolls back what is open. No transaction is left
 * open on exit.
 *
 * Threads: main parses, checks the schema, starts the workers and sums their counters after
 * pthread_join; a worker owns its connection, its generator, its pool and its counters.
 */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <libpq-fe.h>

#include "codec/avl.h"
#include "codec/bytes.h"
#include "gateway/copyenc.h"
#include "gateway/pgschema.h"
#include "loadgen/packetgen.h"

enum {
    CONNS_MAX = 1024,
    BATCH_ROWS_MAX = 1000000,
    POOL_BATCHES_MAX = 4096,
    DEVICES_MAX = 10000000,
    SPAN_H_MAX = 24 * 366,
    TABLE_NAME_BYTES_MAX = 128,
    /* COPY data handed to libpq per PQputCopyData: the gateway's PGSINK_COPY_CHUNK_BYTES, so
     * both send the same CopyData messages. */
    CHUNK_BYTES = 64 * 1024,
    ERR_BYTES = 512,
    SQL_BYTES = 1024,
};

#define HOUR_MS  UINT64_C(3600000)
#define DAY_MS   UINT64_C(86400000)
#define ROWS_MAX UINT64_C(1000000000000)
/* A realistic record is at most this much later than the one before it (packetgen). */
#define RECORD_STEP_MS_MAX UINT64_C(61000)

struct config {
    const char *conninfo;
    const char *json_path;
    const char *table;
    enum copyenc_layout layout;
    unsigned conns;
    double seconds; /* 0: no time limit (--rows) */
    unsigned batch_rows;
    unsigned records_per_packet;
    unsigned devices;
    unsigned pool_batches;
    uint64_t seed;
    uint64_t rows;      /* --rows: 0 for the timed pool */
    unsigned span_h;    /* --span-h: 0 for "now" */
    int64_t span_end_s; /* --span-end-s: 0 for now */
};

/* One pre-encoded COPY stream: file header, rows, file trailer. */
struct batch {
    uint8_t *bytes;
    size_t bytes_len;
    uint32_t rows;
    uint32_t *ts_off;    /* per row: offset of its ts value (big-endian int64, µs) */
    int64_t ts_shift_us; /* what the ts values are currently moved by */
};

struct gen;

struct worker {
    _Alignas(64) pthread_t thread;
    unsigned index;
    PGconn *conn;
    struct gen *gen;
    struct batch *pool;
    /* written by the worker, read by main after pthread_join */
    uint64_t rows;
    uint64_t batches;
    uint64_t copy_bytes;
    int rc;
    char err[ERR_BYTES];
};

static struct config cfg = {
    .table = "telemetry.positions",
    .layout = COPYENC_ARRAYS,
    .conns = 0,
    .seconds = 0,
    .batch_rows = 4000,
    .records_per_packet = 10,
    .devices = 1000,
    .pool_batches = 8,
    .seed = 1,
};

static char copy_sql[SQL_BYTES]; /* COPY <table> (<columns>) FROM STDIN (FORMAT binary) */

static atomic_bool stop_now;      /* a signal, or a worker failed */
static struct timespec deadline;  /* CLOCK_MONOTONIC; set by main between the two barriers */
static pthread_barrier_t barrier; /* workers + main: "ready", then "go" */
static atomic_bool prep_failed;

static atomic_uint signals_seen;

/* The first SIGINT/SIGTERM lets the batches in flight commit; a second one (a server that does
 * not answer) ends the process, and the server rolls back what its connections had open. */
static void on_signal(int sig)
{
    atomic_store(&stop_now, true);
    if (atomic_fetch_add(&signals_seen, 1) > 0) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Without --seconds (a --rows load) there is no deadline. */
static bool past_deadline(void)
{
    if (cfg.seconds <= 0)
        return false;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec > deadline.tv_sec ||
           (ts.tv_sec == deadline.tv_sec && ts.tv_nsec >= deadline.tv_nsec);
}

static uint64_t realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The first line of a libpq message, for a one-line error. */
static void set_err(struct worker *w, const char *what, const char *msg)
{
    snprintf(w->err, sizeof w->err, "%s: %s", what, msg);
    w->err[strcspn(w->err, "\n")] = '\0';
}

/* ---- the pool ------------------------------------------------------------------------- */

/* Offset of ts's value in a row: field count (2), imei length and value (4 + 8), ts length.
 * The same in every layout: the IO columns come after. */
enum { ROW_TS_OFFSET = 2 + 4 + 8 + 4 };

/* Moves every row's ts so that it is (original + shift_us). */
static void batch_shift_ts(struct batch *b, int64_t shift_us)
{
    int64_t delta = shift_us - b->ts_shift_us;
    if (delta == 0)
        return;
    for (uint32_t i = 0; i < b->rows; i++) {
        uint8_t *p = b->bytes + b->ts_off[i];
        put_be64(p, (uint64_t)((int64_t)be64(p) + delta));
    }
    b->ts_shift_us = shift_us;
}

static int grow(struct batch *b, size_t *cap, size_t need)
{
    if (b->bytes_len + need <= *cap)
        return 0;
    size_t n = *cap * 2 > b->bytes_len + need ? *cap * 2 : b->bytes_len + need;
    uint8_t *p = realloc(b->bytes, n);
    if (!p)
        return -ENOMEM;
    b->bytes = p;
    *cap = n;
    return 0;
}

static void batch_free(struct batch *b)
{
    free(b->bytes);
    free(b->ts_off);
    memset(b, 0, sizeof *b);
}

/* The generator state of one worker: its devices and the packet being cut into rows. */
struct gen {
    struct pktgen *devs; /* the worker's devices */
    unsigned devs_len;
    uint64_t packets;
    uint64_t ts_lo_ms, ts_hi_ms;  /* record times: [max(today 00:00, now - 1 h), end of today) */
    uint64_t span_lo_ms, span_ms; /* --span-h: the fleet's clock runs over [lo, lo + span) */
    uint64_t rows_made;           /* rows encoded so far */
    uint64_t rows_total;          /* --rows: this worker's share */
    struct pktgen_packet pkt;     /* large: the gen is on the heap */
    uint8_t frame[PKTGEN_FRAME_BYTES_MAX];
    struct avl_record recs[AVL_RECORDS_MAX];
    unsigned recs_len, recs_next;
    uint64_t imei;
    int64_t received_us;
};

/* Where device d's next packet goes in time, and when it is received (g->received_us). */
static void gen_place(struct gen *g, struct pktgen *d)
{
    uint64_t packet_ms = (uint64_t)cfg.records_per_packet * RECORD_STEP_MS_MAX;
    if (cfg.span_h > 0) {
        /* The fleet's clock: this worker's rows spread over the span in the order made. */
        double at = g->rows_total > 0 ? (double)g->rows_made / (double)g->rows_total : 0;
        uint64_t sent_ms = g->span_lo_ms + (uint64_t)((double)g->span_ms * at);
        d->ts_ms = sent_ms > packet_ms ? sent_ms - packet_ms : 0;
        g->received_us = (int64_t)(sent_ms * 1000u);
        return;
    }
    /* A new device starts in 2019..2025 and walks on: bring it into today's window, in its
     * first half hour so that its next records stay mostly in the past. */
    if (d->ts_ms < g->ts_lo_ms || d->ts_ms + packet_ms >= g->ts_hi_ms)
        d->ts_ms = g->ts_lo_ms + pktgen_below(d, HOUR_MS / 2);
    g->received_us = (int64_t)realtime_us();
}

static int gen_packet(struct gen *g, char *err, size_t err_cap)
{
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    struct pktgen *d = &g->devs[g->packets % g->devs_len];
    uint8_t codec = codecs[g->packets % 3];
    g->packets++;
    gen_place(g, d);
    int n = pktgen_packet_tcp(d, PKTGEN_REALISTIC, codec, cfg.records_per_packet, &g->pkt, g->frame,
                              sizeof g->frame);
    if (n < 0) {
        snprintf(err, err_cap, "packetgen: %s", avl_strerror(n));
        return -EINVAL;
    }
    struct avl_packet hp;
    int rc = avl_decode_tcp(g->frame, (size_t)n, &hp, g->recs);
    if (rc != 0) {
        snprintf(err, err_cap, "decoding a generated packet: %s", avl_strerror(rc));
        return -EINVAL;
    }
    g->recs_len = hp.records_len;
    g->recs_next = 0;
    g->imei = d->imei;
    return 0;
}

/* Makes a COPY stream of rows rows into b (which the caller frees with batch_free, also after
 * an error). */
static int batch_make(struct gen *g, struct batch *b, uint32_t rows, char *err, size_t err_cap)
{
    size_t cap = 64 * 1024; /* grows by doubling: rows are ~350 bytes, up to a few KiB */
    memset(b, 0, sizeof *b);
    b->bytes = malloc(cap);
    b->ts_off = malloc(rows * sizeof *b->ts_off);
    if (!b->bytes || !b->ts_off)
        goto nomem;
    b->bytes_len = (size_t)copyenc_header(b->bytes);
    while (b->rows < rows) {
        if (g->recs_next == g->recs_len && gen_packet(g, err, err_cap) != 0)
            return -EINVAL;
        if (g->recs_len == 0)
            continue;
        const struct avl_record *r = &g->recs[g->recs_next++];
        if (grow(b, &cap, copyenc_row_bytes_max(cfg.layout, r)) != 0)
            goto nomem;
        int w = copyenc_row(cfg.layout, b->bytes + b->bytes_len, cap - b->bytes_len, g->imei, r,
                            g->received_us);
        if (w < 0) {
            snprintf(err, err_cap, "copyenc_row: %s", copyenc_strerror(w));
            return -EINVAL;
        }
        /* The row starts as ROW_TS_OFFSET assumes: its field count, imei of 8 bytes, ts of 8. */
        const uint8_t *row = b->bytes + b->bytes_len;
        assert(row[0] == 0 && row[1] == copyenc_columns_len(cfg.layout) &&
               be64(row + 2) >> 32 == 8 && be64(row + 6) == g->imei && be64(row + 14) >> 32 == 8);
        b->ts_off[b->rows++] = (uint32_t)(b->bytes_len + ROW_TS_OFFSET);
        b->bytes_len += (size_t)w;
        g->rows_made++;
    }
    if (grow(b, &cap, COPYENC_TRAILER_BYTES) != 0)
        goto nomem;
    b->bytes_len += (size_t)copyenc_trailer(b->bytes + b->bytes_len);
    assert(b->rows == rows && b->bytes_len <= cap);
    return 0;
nomem:
    snprintf(err, err_cap, "out of memory for the batches");
    return -ENOMEM;
}

/* The worker's generator: its devices (device numbers index, index + conns, ...), its share of
 * --rows and its clock. NULL after a message in w->err. */
static struct gen *gen_open(struct worker *w)
{
    struct gen *g = calloc(1, sizeof *g);
    unsigned devs_len =
        w->index < cfg.devices ? (cfg.devices - w->index + cfg.conns - 1) / cfg.conns : 0;
    if (devs_len == 0) /* fewer devices than connections: share them */
        devs_len = 1;
    if (g)
        g->devs = calloc(devs_len, sizeof *g->devs);
    if (!g || !g->devs) {
        free(g);
        snprintf(w->err, sizeof w->err, "out of memory for the generator");
        return NULL;
    }
    g->devs_len = devs_len;
    for (unsigned i = 0; i < devs_len; i++) {
        uint64_t dev = ((uint64_t)i * cfg.conns + w->index) % cfg.devices;
        pktgen_init(&g->devs[i], cfg.seed ^ ((dev + 1) << 32));
    }
    uint64_t now_ms = realtime_us() / 1000;
    uint64_t today_ms = now_ms / DAY_MS * DAY_MS;
    g->ts_lo_ms = now_ms - HOUR_MS > today_ms ? now_ms - HOUR_MS : today_ms;
    g->ts_hi_ms = today_ms + DAY_MS;
    g->rows_total = cfg.rows / cfg.conns + (w->index < cfg.rows % cfg.conns ? 1 : 0);
    g->span_ms = (uint64_t)cfg.span_h * HOUR_MS;
    uint64_t end_ms = cfg.span_end_s > 0 ? (uint64_t)cfg.span_end_s * 1000u : now_ms;
    g->span_lo_ms = end_ms - g->span_ms; /* parse_args: span_end_s covers the span */
    return g;
}

static void gen_close(struct gen *g)
{
    if (!g)
        return;
    free(g->devs);
    free(g);
}

/* Makes the worker's pool (the timed mode) from its generator. */
static int pool_make(struct worker *w)
{
    w->pool = calloc(cfg.pool_batches, sizeof *w->pool);
    if (!w->pool) {
        snprintf(w->err, sizeof w->err, "out of memory for the batch pool");
        return -ENOMEM;
    }
    int rc = 0;
    for (unsigned k = 0; k < cfg.pool_batches && rc == 0; k++)
        rc = batch_make(w->gen, &w->pool[k], cfg.batch_rows, w->err, sizeof w->err);
    return rc;
}

static void pool_free(struct worker *w)
{
    if (!w->pool)
        return;
    for (unsigned k = 0; k < cfg.pool_batches; k++)
        batch_free(&w->pool[k]);
    free(w->pool);
    w->pool = NULL;
}

/* ---- one connection ------------------------------------------------------------------- */

/* Runs a command that returns no rows; 0, or -1 with the error in w->err. */
static int exec_cmd(struct worker *w, const char *sql, const char *tag_expected)
{
    PGresult *r = PQexec(w->conn, sql);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        set_err(w, sql, PQerrorMessage(w->conn));
        rc = -1;
    } else if (tag_expected && strcmp(PQcmdStatus(r), tag_expected) != 0) {
        /* COMMIT of a failed transaction answers COMMAND_OK with the tag ROLLBACK. */
        char msg[128];
        snprintf(msg, sizeof msg, "answered %s", PQcmdStatus(r));
        set_err(w, sql, msg);
        rc = -1;
    }
    PQclear(r);
    return rc;
}

/* Leaves the connection outside any transaction: ends a COPY in progress, rolls back. */
static void abandon(struct worker *w)
{
    if (!w->conn || PQstatus(w->conn) != CONNECTION_OK)
        return;
    PGresult *r;
    if (PQtransactionStatus(w->conn) == PQTRANS_ACTIVE) {
        PQputCopyEnd(w->conn, "avlgate-copyceil: aborted");
        while ((r = PQgetResult(w->conn)) != NULL)
            PQclear(r);
    }
    PGTransactionStatusType ts = PQtransactionStatus(w->conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
        r = PQexec(w->conn, "ROLLBACK");
        PQclear(r);
    }
}

/* One transaction: BEGIN, COPY of b, COMMIT. Returns the rows committed, or -1. */
static int64_t copy_batch(struct worker *w, const struct batch *b)
{
    assert(PQtransactionStatus(w->conn) == PQTRANS_IDLE);
    assert(b->rows > 0 && b->bytes_len > COPYENC_HEADER_BYTES + COPYENC_TRAILER_BYTES);
    if (exec_cmd(w, "BEGIN", NULL) != 0)
        return -1;
    PGresult *r = PQexec(w->conn, copy_sql);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        set_err(w, "COPY", PQerrorMessage(w->conn));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    for (size_t off = 0; off < b->bytes_len; off += CHUNK_BYTES) {
        size_t n = b->bytes_len - off < CHUNK_BYTES ? b->bytes_len - off : CHUNK_BYTES;
        if (PQputCopyData(w->conn, (const char *)b->bytes + off, (int)n) != 1) {
            set_err(w, "PQputCopyData", PQerrorMessage(w->conn));
            return -1;
        }
    }
    if (PQputCopyEnd(w->conn, NULL) != 1) {
        set_err(w, "PQputCopyEnd", PQerrorMessage(w->conn));
        return -1;
    }
    int64_t rows = -1;
    r = PQgetResult(w->conn);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK)
        rows = strtoll(PQcmdTuples(r), NULL, 10);
    else
        set_err(w, "COPY", r ? PQresultErrorMessage(r) : PQerrorMessage(w->conn));
    PQclear(r);
    while ((r = PQgetResult(w->conn)) != NULL) /* NULL ends the COPY's results */
        PQclear(r);
    if (rows < 0)
        return -1;
    if (rows != (int64_t)b->rows) {
        char msg[128];
        snprintf(msg, sizeof msg, "loaded %" PRId64 " rows of %" PRIu32, rows, b->rows);
        set_err(w, "COPY", msg);
        return -1;
    }
    if (exec_cmd(w, "COMMIT", "COMMIT") != 0)
        return -1;
    assert(PQtransactionStatus(w->conn) == PQTRANS_IDLE);
    return rows;
}

/* Counts a committed batch, or stops every worker after a failed one. Returns false to stop. */
static bool count_batch(struct worker *w, const struct batch *b, int64_t rows)
{
    if (rows < 0) {
        w->rc = -1;
        atomic_store(&stop_now, true);
        return false;
    }
    w->rows += (uint64_t)rows;
    w->batches++;
    w->copy_bytes += b->bytes_len;
    return true;
}

/* The timed mode: the pool over and over. Each pass moves ts by 1 µs more: new (imei, ts) keys,
 * since one device's records are at least 1 s apart. */
static void run_pool(struct worker *w)
{
    unsigned k = 0;
    uint64_t pass = 0;
    while (!atomic_load(&stop_now) && !past_deadline()) {
        struct batch *b = &w->pool[k];
        batch_shift_ts(b, (int64_t)pass);
        if (!count_batch(w, b, copy_batch(w, b)))
            break;
        if (++k == cfg.pool_batches) {
            k = 0;
            pass++;
        }
    }
}

/* --rows: the worker's share, each batch made just before it is sent and sent once. */
static void run_rows(struct worker *w)
{
    struct gen *g = w->gen;
    while (w->rows < g->rows_total && !atomic_load(&stop_now) && !past_deadline()) {
        uint64_t left = g->rows_total - w->rows;
        uint32_t n = left < cfg.batch_rows ? (uint32_t)left : cfg.batch_rows;
        struct batch b;
        int64_t rows = -1;
        if (batch_make(g, &b, n, w->err, sizeof w->err) == 0)
            rows = copy_batch(w, &b);
        bool go_on = count_batch(w, &b, rows);
        batch_free(&b);
        if (!go_on)
            break;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    w->rc = 0;
    w->conn = PQconnectdb(cfg.conninfo);
    if (PQstatus(w->conn) != CONNECTION_OK) {
        set_err(w, "connect", PQerrorMessage(w->conn));
        w->rc = -1;
    } else if ((w->gen = gen_open(w)) == NULL) {
        w->rc = -1;
    } else if (cfg.rows == 0 && pool_make(w) != 0) {
        w->rc = -1;
    }
    if (w->rc != 0)
        atomic_store(&prep_failed, true);
    pthread_barrier_wait(&barrier); /* ready */
    pthread_barrier_wait(&barrier); /* go: deadline set */
    if (atomic_load(&prep_failed) || w->rc != 0)
        goto out;
    if (cfg.rows > 0)
        run_rows(w);
    else
        run_pool(w);
out:
    abandon(w);
    assert(PQstatus(w->conn) != CONNECTION_OK || PQtransactionStatus(w->conn) == PQTRANS_IDLE);
    PQfinish(w->conn);
    w->conn = NULL;
    pool_free(w);
    gen_close(w->gen);
    w->gen = NULL;
    return NULL;
}

/* ---- start-up ------------------------------------------------------------------------- */

static bool is_default_table(void)
{
    return strcmp(cfg.table, "telemetry.positions") == 0;
}

/* The table exists and has the layout's columns (a SELECT of them), so that a mismatch is one
 * clear message before anything is timed. */
static int check_table(PGconn *c)
{
    const char *params[1] = {cfg.table};
    PGresult *r =
        PQexecParams(c, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "avlgate-copyceil: looking for %s: %s", cfg.table, PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    bool exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!exists && is_default_table()) {
        fprintf(stderr,
                "avlgate-copyceil: table telemetry.positions does not exist in database \"%s\"; "
                "apply the schema first: for f in schema/postgres/*.sql; do psql -v "
                "ON_ERROR_STOP=1 \"$PG\" -f \"$f\"; done\n",
                PQdb(c));
        return -1;
    }
    if (!exists) {
        fprintf(stderr, "avlgate-copyceil: table %s does not exist in database \"%s\"\n", cfg.table,
                PQdb(c));
        return -1;
    }
    char sql[SQL_BYTES];
    snprintf(sql, sizeof sql, "SELECT %s FROM %s LIMIT 0", copyenc_columns(cfg.layout), cfg.table);
    r = PQexec(c, sql);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        char err[ERR_BYTES];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
        fprintf(stderr, "avlgate-copyceil: table %s lacks the columns of --io-layout %s: %s\n",
                cfg.table, copyenc_layout_name(cfg.layout), err);
        rc = -1;
    }
    PQclear(r);
    return rc;
}

/* The table must exist with the layout's columns before anything is timed; for
 * telemetry.positions, the rest of the gateway's check follows. */
static int check_schema(void)
{
    PGconn *c = PQconnectdb(cfg.conninfo);
    char err[1024];
    int rc = -1;
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(err, sizeof err, "%s", PQerrorMessage(c));
        err[strcspn(err, "\n")] = '\0';
        fprintf(stderr, "avlgate-copyceil: cannot connect (%s): %s\n", cfg.conninfo, err);
        goto out;
    }
    if (check_table(c) != 0)
        goto out;
    if (!is_default_table()) { /* the caller's table: its partitions are the caller's */
        rc = 0;
        goto out;
    }
    if (pgschema_check(c, cfg.layout, err, sizeof err) != 0) {
        fprintf(stderr, "avlgate-copyceil: the database schema is not what avlgate writes: %s\n",
                err);
        goto out;
    }
    /* As the gateway at start: today's partition exists, so rows do not go to the default. */
    if (pgschema_ensure_partitions(c, 7, err, sizeof err) < 0) {
        fprintf(stderr, "avlgate-copyceil: partitions not created: %s\n", err);
        goto out;
    }
    rc = 0;
out:
    PQfinish(c);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: avlgate-copyceil --pg CONNINFO --conns N (--seconds S | --rows N)\n"
            "                        [--io-layout arrays|jsonb|raw] [--table telemetry.positions]\n"
            "                        [--span-h H [--span-end-s UNIX_S]] [--batch-rows 4000]\n"
            "                        [--records-per-packet 10] [--devices 1000]\n"
            "                        [--pool-batches 8] [--seed 1] [--json FILE]\n"
            "  N connections, each repeating BEGIN; COPY TABLE (the layout's columns) FROM STDIN\n"
            "  (FORMAT binary) of --batch-rows gateway-encoded rows; COMMIT, for S seconds; with\n"
            "  --rows, exactly N distinct rows in all, made as they go (with --span-h, spread\n"
            "  over the H hours up to --span-end-s in time order). Prints copy_rows_per_s=...\n"
            "  rows=... seconds=... conns=... client_cpu_s=... io_layout=... table=...\n");
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* SCHEMA.TABLE or TABLE of plain identifiers (letters, digits, _): spliced into SQL as is. */
static bool table_name_ok(const char *s)
{
    size_t n = strlen(s), dots = 0;
    if (n == 0 || n >= TABLE_NAME_BYTES_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool start = i == 0 || s[i - 1] == '.';
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
        if (ch == '.' && !start && i + 1 < n && ++dots == 1)
            continue;
        if (!alpha && (start || ch < '0' || ch > '9'))
            return false;
    }
    return true;
}

static const struct option opts[] = {
    {"pg", required_argument, NULL, 'p'},
    {"conns", required_argument, NULL, 'c'},
    {"seconds", required_argument, NULL, 's'},
    {"rows", required_argument, NULL, 'R'},
    {"io-layout", required_argument, NULL, 'L'},
    {"table", required_argument, NULL, 'T'},
    {"span-h", required_argument, NULL, 'H'},
    {"span-end-s", required_argument, NULL, 'E'},
    {"batch-rows", required_argument, NULL, 'b'},
    {"records-per-packet", required_argument, NULL, 'r'},
    {"devices", required_argument, NULL, 'd'},
    {"pool-batches", required_argument, NULL, 'P'},
    {"seed", required_argument, NULL, 'S'},
    {"json", required_argument, NULL, 'j'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* One option's value into cfg. Returns 0, or -1 for a bad value. */
static int parse_opt(int o, const char *arg)
{
    char *end;
    uint64_t v;
    int layout;
    switch (o) {
    case 'p':
        cfg.conninfo = arg;
        return 0;
    case 'c':
        return parse_uint(arg, 1, CONNS_MAX, &cfg.conns);
    case 's':
        errno = 0;
        cfg.seconds = strtod(arg, &end);
        return errno || end == arg || *end || !(cfg.seconds > 0 && cfg.seconds <= 86400) ? -1 : 0;
    case 'R':
        return parse_u64(arg, 1, ROWS_MAX, &cfg.rows);
    case 'L':
        layout = copyenc_layout_parse(arg);
        cfg.layout = (enum copyenc_layout)(layout < 0 ? 0 : layout);
        return layout < 0 ? -1 : 0;
    case 'T':
        cfg.table = arg;
        return table_name_ok(arg) ? 0 : -1;
    case 'H':
        return parse_uint(arg, 1, SPAN_H_MAX, &cfg.span_h);
    case 'E':
        if (parse_u64(arg, 1, AVL_TS_MS_END / 1000 - 1, &v) != 0)
            return -1;
        cfg.span_end_s = (int64_t)v;
        return 0;
    case 'b':
        return parse_uint(arg, 1, BATCH_ROWS_MAX, &cfg.batch_rows);
    case 'r':
        return parse_uint(arg, 1, AVL_RECORDS_MAX, &cfg.records_per_packet);
    case 'd':
        return parse_uint(arg, 1, DEVICES_MAX, &cfg.devices);
    case 'P':
        return parse_uint(arg, 1, POOL_BATCHES_MAX, &cfg.pool_batches);
    case 'S':
        return parse_u64(arg, 0, UINT64_MAX, &cfg.seed);
    case 'j':
        cfg.json_path = arg;
        return 0;
    default:
        return -1;
    }
}

/* What the options say together. Returns 0, or -1 after a message. */
static int check_args(void)
{
    const char *why = NULL;
    if (!cfg.conninfo || cfg.conns == 0 || (cfg.seconds <= 0 && cfg.rows == 0))
        why = "--pg, --conns and --seconds or --rows are required";
    else if (cfg.span_h > 0 && cfg.rows == 0)
        why = "--span-h needs --rows";
    else if (cfg.span_end_s > 0 && cfg.span_h == 0)
        why = "--span-end-s needs --span-h";
    else if (cfg.span_end_s > 0 && (uint64_t)cfg.span_end_s < (uint64_t)cfg.span_h * 3600u)
        why = "--span-end-s is before the span could start";
    if (!why)
        return 0;
    fprintf(stderr, "avlgate-copyceil: %s\n", why);
    usage(stderr);
    return -1;
}

static int parse_args(int argc, char **argv)
{
    int o, li = 0;
    while ((o = getopt_long(argc, argv, "h", opts, &li)) != -1) {
        if (o == 'h') {
            usage(stdout);
            exit(0);
        }
        if (o == '?') {
            usage(stderr);
            return -1;
        }
        if (parse_opt(o, optarg) != 0) {
            fprintf(stderr, "avlgate-copyceil: bad value for --%s: %s\n", opts[li].name, optarg);
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "avlgate-copyceil: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    if (check_args() != 0)
        return -1;
    snprintf(copy_sql, sizeof copy_sql, "COPY %s (%s) FROM STDIN (FORMAT binary)", cfg.table,
             copyenc_columns(cfg.layout));
    return 0;
}

/* ---- the run ------------------------------------------------------------------------- */

/* What the connections did, summed after pthread_join. */
struct totals {
    uint64_t rows, batches, copy_bytes;
    double t0_s, cpu0_s;   /* the start: CLOCK_MONOTONIC, this process's CPU */
    double seconds, cpu_s; /* from the start until the last worker ended */
};

/* The first SIGINT/SIGTERM stops the run (on_signal); a broken connection is an error code. */
static void install_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* The deadline: --seconds from now. */
static void set_deadline(void)
{
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)cfg.seconds;
    deadline.tv_nsec += (long)((cfg.seconds - (double)(time_t)cfg.seconds) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
}

/* Starts a worker per connection, waits until every one connected and made its pool, then
 * starts the clock (t->t0_s, t->cpu0_s) and lets them go. */
static void start_workers(struct worker *ws, struct totals *t)
{
    pthread_barrier_init(&barrier, NULL, cfg.conns + 1);
    unsigned started = 0;
    for (; started < cfg.conns; started++) {
        ws[started].index = started;
        if (pthread_create(&ws[started].thread, NULL, worker_main, &ws[started]) != 0)
            break;
    }
    if (started < cfg.conns) {
        /* The barrier counts every worker: with one missing it would never open. */
        fprintf(stderr, "avlgate-copyceil: cannot start %u threads\n", cfg.conns);
        _exit(1); /* the server rolls back whatever the started connections had open */
    }
    pthread_barrier_wait(&barrier); /* every worker connected and made its pool */
    t->t0_s = mono_s();
    t->cpu0_s = cpu_s();
    set_deadline();
    pthread_barrier_wait(&barrier); /* go */
}

/* Joins the workers and sums their counters and the run's span. Returns 0, or 1 after a message for
 * each connection that failed. */
static int join_workers(struct worker *ws, struct totals *t)
{
    int rc = 0;
    for (unsigned i = 0; i < cfg.conns; i++) {
        pthread_join(ws[i].thread, NULL);
        t->rows += ws[i].rows;
        t->batches += ws[i].batches;
        t->copy_bytes += ws[i].copy_bytes;
        if (ws[i].rc != 0) {
            fprintf(stderr, "avlgate-copyceil: connection %u: %s\n", i, ws[i].err);
            rc = 1;
        }
    }
    t->seconds = mono_s() - t->t0_s;
    t->cpu_s = cpu_s() - t->cpu0_s;
    pthread_barrier_destroy(&barrier);
    return rc;
}

/* The result line and --json. Returns 0, or 1 when the JSON file could not be written. */
static int print_results(const struct totals *t)
{
    double rate = t->seconds > 0 ? (double)t->rows / t->seconds : 0;
    double mib_per_s = t->seconds > 0 ? (double)t->copy_bytes / t->seconds / (1024.0 * 1024.0) : 0;
    const char *layout = copyenc_layout_name(cfg.layout);
    printf("copy_rows_per_s=%.0f rows=%" PRIu64 " seconds=%.3f conns=%u client_cpu_s=%.3f "
           "batches=%" PRIu64 " batch_rows=%u copy_mib_per_s=%.1f io_layout=%s table=%s\n",
           rate, t->rows, t->seconds, cfg.conns, t->cpu_s, t->batches, cfg.batch_rows, mib_per_s,
           layout, cfg.table);
    if (!cfg.json_path)
        return 0;
    FILE *f = fopen(cfg.json_path, "w");
    if (!f) {
        fprintf(stderr, "avlgate-copyceil: %s: %s\n", cfg.json_path, strerror(errno));
        return 1;
    }
    /* The table name is plain identifiers (table_name_ok): no JSON escaping needed. */
    fprintf(f,
            "{\"copy_rows_per_s\":%.0f,\"rows\":%" PRIu64 ",\"seconds\":%.3f,\"conns\":%u,"
            "\"client_cpu_s\":%.3f,\"batches\":%" PRIu64 ",\"batch_rows\":%u,"
            "\"copy_mib_per_s\":%.1f,\"io_layout\":\"%s\",\"table\":\"%s\"}\n",
            rate, t->rows, t->seconds, cfg.conns, t->cpu_s, t->batches, cfg.batch_rows, mib_per_s,
            layout, cfg.table);
    if (fclose(f) != 0) {
        fprintf(stderr, "avlgate-copyceil: %s: %s\n", cfg.json_path, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) != 0)
        return 2;
    if (check_schema() != 0)
        return 1;
    install_signals();
    struct worker *ws = aligned_alloc(64, cfg.conns * sizeof *ws);
    if (!ws) {
        fprintf(stderr, "avlgate-copyceil: out of memory\n");
        return 1;
    }
    memset(ws, 0, cfg.conns * sizeof *ws);
    struct totals t = {0};
    start_workers(ws, &t);
    int rc = join_workers(ws, &t);
    free(ws);
    if (atomic_load(&prep_failed))
        return 1;
    if (print_results(&t) != 0)
        return 1;
    return rc;
}
