/* gwproc.h — the whole gateway under test: the real `avlgate run` as a child process of a
 * cmocka integration test, in a database of the case's own on the pg fixture's server, and
 * the steps those tests take against it.
 *
 *   a case      gwproc_begin makes the database (schema applied), picks a free loopback port
 *               and names the log (<test>_<case>.log in AVLGATE_TEST_LOGDIR); gwproc_end, the
 *               teardown, stops the gateway (SIGTERM, then SIGKILL), starts the fixture's
 *               server again if the case left it stopped, and drops the database.
 *   the process gwproc_start / _kill / _term, the log (counts of a needle, the final
 *               counters, the per-shard sums of the "shard stopped" lines).
 *   devices     open with a handshake, send a packet and check its ACK, expect a close.
 *   packets     tagged records: IO element GWPROC_TAG_IO_ID carries a tag that names the
 *               device, packet and record, so rows are countable exactly.
 *
 * Test-only code: every failure fails the case through CHECK, which prints the tail of the
 * running case's gateway log first (the case gwproc_begin set up last). One case at a time;
 * single-threaded. Include <cmocka.h> before using CHECK. AVLGATE_BIN (the binary) and
 * AVLGATE_TEST_LOGDIR are compile definitions of this library. */
#ifndef AVLGATE_TESTS_SUPPORT_GWPROC_H
#define AVLGATE_TESTS_SUPPORT_GWPROC_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/pgtest.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    GWPROC_SHARDS = 2,            /* every gateway under test runs two shards */
    GWPROC_WAIT_MS = 5000,        /* one ACK, one handshake, one close */
    GWPROC_START_WAIT_MS = 30000, /* the gateway's start-up */
    GWPROC_TAG_IO_ID = 200,       /* the IO element that carries a record's tag */
    GWPROC_SLOW_EVENT_ID = 7777,  /* gwproc_slow_commit_trigger sleeps on rows of this event */
};

/* The case: its gateway and its database. */
struct gwproc {
    const char *name;    /* the case, [a-z0-9_] */
    struct pgtest_db db; /* the case's database, schema applied */
    uint16_t port;       /* the gateway's device port on 127.0.0.1 */
    char instance[64];   /* --instance */
    char log[PATH_MAX];  /* the gateway's stdout and stderr, appended across restarts */
    int64_t wall0_ms;    /* wall clock at gwproc_begin */
    pid_t pid;           /* the running gateway; 0 when none */
    bool pg_down;        /* the fixture's server is stopped (gwproc_pgtmp) */
};

/* Prints the last lines of the current case's gateway log (nothing before gwproc_begin). */
void gwproc_print_log(void);

/* A failed check prints the gateway's log tail, then fails the case. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            gwproc_print_log();                                                                    \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* ---- the case ------------------------------------------------------------------------------ */

/* Sets g up for case name of test (the log file's prefix) with the gateway's --instance and
 * makes it the current case. Nothing runs yet. */
void gwproc_begin(struct gwproc *g, const char *test, const char *name, const char *instance);

/* The teardown: stops the gateway (SIGTERM, so the log ends with its counters; SIGKILL after
 * 10 s), starts the fixture's server if it is down, drops the database. Safe after a failure
 * anywhere, and twice. */
void gwproc_end(struct gwproc *g);

/* Wall-clock ms since 1970. */
int64_t gwproc_wall_ms(void);

/* A recent timestamp (an hour before the case began, whole seconds): rows land in today's
 * partitions. */
uint64_t gwproc_recent_ts_ms(const struct gwproc *g);

/* ---- child processes ---------------------------------------------------------------------- */

/* The avlgate binary under test, and the folder the tests write their logs and scratch files
 * into (the build's tests folder). Static strings. */
const char *gwproc_avlgate(void);
const char *gwproc_logdir(void);

/* Forks and execs argv[0] (a path) with argv, its stdout and stderr appended to out_path.
 * Returns the child's pid. */
pid_t gwproc_spawn(const char *const *argv, const char *out_path);

/* Waits up to timeout_ms for child pid to exit; returns its wait status, or -1 if it is still
 * running. */
int gwproc_waitpid(pid_t pid, int timeout_ms);

/* ---- the gateway --------------------------------------------------------------------------- */

/* Starts `avlgate run` on g->port with the common options (two shards, g's database and
 * instance, 5 ms batches, small tables, 5 s frame timeout), then extra (NULL-terminated, may
 * be NULL; later options win), and waits until the port accepts connections. */
void gwproc_start(struct gwproc *g, const char *const *extra);

/* True while the gateway runs (reaps it when it has exited). */
bool gwproc_running(struct gwproc *g);

/* Waits for the gateway to exit; returns its wait status, or -1 when it did not exit. */
int gwproc_wait(struct gwproc *g, int timeout_ms);

/* SIGKILL, then waits until the port refuses connections (io_uring tears a dead process's
 * ring down asynchronously; its pending accept holds the listener until then). */
void gwproc_kill(struct gwproc *g);

/* The counters the gateway prints when it stops ("stopped packets=... invalid=..."). */
struct gwproc_stats {
    long long packets, records, stored, duplicates, acked, invalid;
};

/* SIGTERM: the gateway must drain and exit 0 within 15 s; returns its final counters. */
struct gwproc_stats gwproc_term(struct gwproc *g);

/* The sum of `key=<n>` over the log's "shard stopped" lines, which must be one per shard. */
long long gwproc_shard_sum(const struct gwproc *g, const char *key);

/* How many lines of the log contain needle. */
unsigned gwproc_log_count(const struct gwproc *g, const char *needle);

/* Waits until the log has needle on at least count lines. */
void gwproc_wait_log(const struct gwproc *g, const char *needle, unsigned count, int timeout_ms);

/* Runs the fixture's pgtmp.sh with verb (stop, kill, start) on its server and keeps
 * g->pg_down up to date, so gwproc_end restarts a server a failed case left down. */
void gwproc_pgtmp(struct gwproc *g, const char *verb);

/* ---- SQL on the case's database ------------------------------------------------------------ */

/* pgtest_scalar_ll of a printf-formatted query. */
long long gwproc_sql_ll(const struct gwproc *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A deferred constraint trigger: a COMMIT that holds a row with event_id GWPROC_SLOW_EVENT_ID
 * sleeps `seconds` (SQL text) first, so a case can see a batch in flight. */
void gwproc_slow_commit_trigger(const struct gwproc *g, const char *seconds);

/* Waits until a gateway transaction sleeps in a trigger (pg_sleep outside a state load): its
 * batch is in flight. Returns the backend's pid. */
long long gwproc_wait_backend_sleeping(const struct gwproc *g);

/* ---- devices ------------------------------------------------------------------------------- */

/* Connects d to the gateway as imei and completes the handshake (0x01). */
void gwproc_dev_open(const struct gwproc *g, struct device *d, uint64_t imei);

/* Sends a packet (in pieces when piece > 0, gap_ms apart) and waits for its ACK, which must
 * say records. */
void gwproc_send_acked(struct device *d, const uint8_t *p, size_t len, uint32_t records,
                       size_t piece, int gap_ms);

/* The gateway closes d within timeout_ms and sends it nothing (no ACK, no answer). */
void gwproc_expect_closed_silently(struct device *d, int timeout_ms, const char *what);

/* ---- tagged packets ------------------------------------------------------------------------ */

/* A tagged record: the fixed fields that matter to a case, the rest plausible. */
struct gwproc_rspec {
    uint64_t ts_ms;
    uint32_t tag;
    uint8_t satellites;
    uint16_t event_id;
    int32_t lon_e7, lat_e7;
};

/* Encodes records rs[0 .. n-1] as one TCP frame of codec into out; returns its length. */
size_t gwproc_encode_tagged(uint8_t codec, const struct gwproc_rspec *rs, unsigned n, uint8_t *out,
                            size_t cap);

/* n records from ts0_ms on, step_ms apart (negative: newest first), tags from tag0 on. */
size_t gwproc_encode_series(uint8_t codec, uint64_t ts0_ms, int64_t step_ms, uint32_t tag0,
                            unsigned n, uint8_t *out, size_t cap);

/* ---- rows ------------------------------------------------------------------------------------ */

/* Exactly one row of imei in telemetry.positions has every column of r (io as copyenc writes
 * it: {"id": value | "hex"} in wire order), and a received_at within this case. */
void gwproc_expect_row(const struct gwproc *g, uint64_t imei, const struct avl_record *r);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_TESTS_SUPPORT_GWPROC_H */
