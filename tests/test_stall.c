/* test_stall.c — the whole gateway when rows do not fit and the database stalls: the real
 * `avlgate run` (tests/support/gwproc.h) against the fixture's PostgreSQL.
 *
 * Cases:
 *   out_of_range  a CRC-valid record with angle 40000 and speed 50000 (u16 on the wire, smallint
 *                 columns) is stored with those fields NULL and the rest as sent, ACKed, counted
 *                 by field in /metrics; the duplicate window still sees the wire values.
 *   row_lock      another session holds one device's device_state row FOR UPDATE while 100
 *                 devices send: the other devices keep being ACKed (their longest ACK wait is
 *                 printed and held to a generous bound), and the locked device's records are
 *                 stored exactly once after the lock is released. Quick by default (a 6 s hold,
 *                 --txn-timeout-ms 1000); AVLGATE_STALL_HOLD_S and AVLGATE_STALL_TIMEOUT_MS set
 *                 the 60 s / 5000 ms run by hand.
 *   group_commit  a SHARE lock on telemetry.positions stalls every COPY for 2 s while 100 devices
 *                 send: what arrived meanwhile commits in one transaction after the stalled one.
 *   load_refused  the state load fails (device_state_claim replaced by one that raises 42501, as a
 *                 revoked EXECUTE does: the fixture's role is a superuser, which no REVOKE
 *                 stops): it is retried a few times a second, not in a tight loop, counted and
 *                 logged; the device waits, and is answered once the function is back.
 *
 * Every wait is bounded; timing figures are printed, and only generous bounds asserted. The
 * gateway's output goes to test_stall_<case>.log in the build directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/pgtest.h"
#include "tests/support/promtext.h"
#include "tests/support/scrape.h"

enum {
    WAIT_MS = GWPROC_WAIT_MS,
    TAG_IO_ID = GWPROC_TAG_IO_ID,
    PKT_BYTES = 256,
    FLEET_DEVICES = 100,
    FLEET_GAP_MS = 250, /* between an ACK and a device's next packet */
};

#define IMEI_BASE UINT64_C(356307042441013)

/* ---- the case: what the teardown must undo ------------------------------------------------ */

struct fleet {
    unsigned n, per;
    struct tracker *t;
    struct tracker_pkt *pkts; /* n x per */
    uint8_t *bytes;           /* n x per x PKT_BYTES */
};

static struct {
    struct gwproc gw;
    uint16_t metrics_port;
    PGconn *side; /* a session of the case's own (the lock holder) */
    struct fleet fleet;
} T;

static void begin(const char *name, const char *const *extra)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_stall", name, "test_stall");
    T.metrics_port = device_free_port();
    char metrics[32];
    snprintf(metrics, sizeof metrics, "127.0.0.1:%u", T.metrics_port);
    const char *argv[16] = {"--metrics", metrics};
    unsigned n = 2;
    for (unsigned i = 0; extra && extra[i]; i++) {
        assert_true(n < 15);
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    gwproc_start(&T.gw, argv);
}

static int teardown(void **state)
{
    (void)state;
    if (T.side)
        PQfinish(T.side); /* a lock still held goes with it */
    T.side = NULL;
    for (unsigned i = 0; T.fleet.t && i < T.fleet.n; i++)
        tracker_stop(&T.fleet.t[i]);
    free(T.fleet.t);
    free(T.fleet.pkts);
    free(T.fleet.bytes);
    memset(&T.fleet, 0, sizeof T.fleet);
    gwproc_end(&T.gw);
    return 0;
}

/* ---- /metrics ----------------------------------------------------------------------------- */

/* GET /metrics, parsed strictly (tests/support/promtext.h). */
static void scrape(struct prom_text *t)
{
    char err[512];
    CHECK(metrics_scrape(T.metrics_port, t, err, sizeof err) == 0, "%s", err);
}

/* The sum over the shards of metric name (with one more label pair, or NULL). */
static double metric(const char *name, const char *label, const char *value)
{
    struct prom_text t;
    scrape(&t);
    CHECK(prom_family(&t, name) != NULL, "/metrics has no %s", name);
    double v = label ? prom_sum(&t, name, label, value, NULL) : prom_sum(&t, name, NULL);
    prom_free(&t);
    return v;
}

/* ---- out_of_range ------------------------------------------------------------------------- */

/* One Codec 8 record with tag, angle and speed; the rest fixed. */
static struct avl_record_src odd_record(uint64_t ts_ms, uint32_t tag, uint16_t angle,
                                        uint16_t speed, struct avl_io_elem io[2])
{
    io[0] = (struct avl_io_elem){.id = 239, .width = 1, .value = 1};
    io[1] = (struct avl_io_elem){.id = TAG_IO_ID, .width = 4, .value = tag};
    return (struct avl_record_src){.rec = {.ts_ms = ts_ms,
                                           .lon_e7 = 253000000,
                                           .lat_e7 = 546000000,
                                           .altitude_m = 120,
                                           .angle_deg = angle,
                                           .speed_kmh = speed,
                                           .satellites = 9,
                                           .priority = 1,
                                           .event_id = 239,
                                           .codec = AVL_CODEC_8},
                                   .io = io,
                                   .io_len = 2};
}

/* The row of tag: "angle|speed|satellites|lon|lat|altitude|event_id|rows" (NULL as "-"). */
static void row_of(uint32_t tag, char *out, size_t cap)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT concat_ws('|', coalesce(angle::text, '-'), coalesce(speed::text, '-'), "
             "satellites, lon, lat, altitude, event_id, count(*) OVER ()) "
             "FROM telemetry.positions_io WHERE (io->>'%d')::bigint = %u LIMIT 1",
             TAG_IO_ID, tag);
    pgtest_scalar(T.gw.db.conn, sql, out, cap);
}

/* A record whose angle and speed do not fit smallint is stored with them NULL (the rest as
 * sent), ACKed and counted; another that differs only in its (also too large) angle is a new
 * record to the duplicate window, which sees wire values; a re-send is a duplicate. */
static void test_out_of_range(void **state)
{
    (void)state;
    begin("out_of_range", NULL);
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    struct avl_io_elem io[3][2];
    struct avl_record_src src[3] = {odd_record(ts, 1, 40000, 50000, io[0]),
                                    odd_record(ts + 1000, 2, 40000, 10, io[1]),
                                    odd_record(ts + 2000, 3, 90, 60, io[2])};
    uint8_t pkt[PKT_BYTES], again[PKT_BYTES];
    int len = avl_encode_tcp(pkt, sizeof pkt, AVL_CODEC_8, src, 3);
    assert_true(len > 0);
    struct device d;
    gwproc_dev_open(&T.gw, &d, IMEI_BASE);
    gwproc_send_acked(&d, pkt, (size_t)len, 3, 0, 0);

    char row[256];
    row_of(1, row, sizeof row);
    CHECK(strcmp(row, "-|-|9|25.3|54.6|120|239|1") == 0, "tag 1: %s", row);
    row_of(2, row, sizeof row);
    CHECK(strcmp(row, "-|10|9|25.3|54.6|120|239|1") == 0, "tag 2: %s", row);
    row_of(3, row, sizeof row);
    CHECK(strcmp(row, "90|60|9|25.3|54.6|120|239|1") == 0, "tag 3: %s", row);

    /* the first record again but angle 40001: stored NULL too, yet not a duplicate */
    src[0] = odd_record(ts, 1, 40001, 50000, io[0]);
    int len2 = avl_encode_tcp(again, sizeof again, AVL_CODEC_8, src, 1);
    assert_true(len2 > 0);
    gwproc_send_acked(&d, again, (size_t)len2, 1, 0, 0);
    row_of(1, row, sizeof row);
    CHECK(strcmp(row, "-|-|9|25.3|54.6|120|239|2") == 0, "tag 1 after angle 40001: %s", row);
    /* the first packet re-sent: duplicates, ACKed, nothing stored or counted again */
    gwproc_send_acked(&d, pkt, (size_t)len, 3, 0, 0);
    device_close(&d);
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == 4, "rows");

    CHECK(metric("avlgate_records_field_out_of_range_total", "field", "angle") == 3,
          "angle out of range");
    CHECK(metric("avlgate_records_field_out_of_range_total", "field", "speed") == 2,
          "speed out of range");
    CHECK(metric("avlgate_records_duplicate_total", NULL, NULL) == 3, "duplicates");
    CHECK(metric("avlgate_packets_acked_total", NULL, NULL) == 3, "ACKs");
    struct prom_text t;
    scrape(&t);
    CHECK(prom_count(&t, "avlgate_packets_invalid_total", NULL) == 0, "a packet refused");
    prom_free(&t);
}

/* ---- row_lock ------------------------------------------------------------------------------ */

static unsigned env_u(const char *name, unsigned dflt)
{
    const char *v = getenv(name);
    return v && *v ? (unsigned)strtoul(v, NULL, 10) : dflt;
}

static uint64_t fleet_imei(unsigned d)
{
    return IMEI_BASE + 7u * d;
}

/* n trackers with per one-record packets each, a tag per record ((d+1) * 10^6 + packet). */
static void fleet_make(unsigned n, unsigned per)
{
    struct fleet *f = &T.fleet;
    f->n = n;
    f->per = per;
    f->t = calloc(n, sizeof *f->t);
    f->pkts = calloc((size_t)n * per, sizeof *f->pkts);
    f->bytes = malloc((size_t)n * per * PKT_BYTES);
    assert_true(f->t && f->pkts && f->bytes);
    uint64_t ts0 = gwproc_recent_ts_ms(&T.gw);
    for (unsigned d = 0; d < n; d++) {
        for (unsigned p = 0; p < per; p++) {
            uint8_t *b = f->bytes + ((size_t)d * per + p) * PKT_BYTES;
            size_t len = gwproc_encode_series(AVL_CODEC_8E, ts0 + p * 1000u, 1000,
                                              (d + 1) * 1000000u + p, 1, b, PKT_BYTES);
            f->pkts[(size_t)d * per + p] =
                (struct tracker_pkt){.bytes = b, .len = len, .records = 1};
        }
        struct tracker *t = &f->t[d];
        tracker_init(t, T.gw.port, fleet_imei(d), &f->pkts[(size_t)d * per], per);
        t->gap_ms = FLEET_GAP_MS;
        t->ack_timeout_ms = 60000; /* a long wait shows as one, not as a reconnect */
    }
}

/* The longest ACK wait so far of the devices other than device 0: the time from the end of the
 * gap after an ACK (when the next packet goes) to that packet's ACK. */
static uint64_t others_longest_wait_ms(void)
{
    const struct fleet *f = &T.fleet;
    uint64_t longest = 0;
    for (unsigned d = 1; d < f->n; d++) {
        const struct tracker_pkt *p = &f->pkts[(size_t)d * f->per];
        for (unsigned k = 1; k < f->t[d].acked; k++) {
            uint64_t sent = p[k - 1].acked_ms + FLEET_GAP_MS;
            uint64_t wait = p[k].acked_ms > sent ? p[k].acked_ms - sent : 0;
            longest = wait > longest ? wait : longest;
        }
    }
    return longest;
}

static unsigned fleet_done(void)
{
    unsigned done = 0;
    for (unsigned d = 0; d < T.fleet.n; d++)
        done += T.fleet.t[d].acked == T.fleet.per;
    return done;
}

/* Polls the fleet for ms, or until every tracker is done when until_done. */
static void fleet_poll(int ms, bool until_done)
{
    uint64_t end = device_now_ms() + (uint64_t)ms;
    while (device_now_ms() < end && !(until_done && fleet_done() == T.fleet.n))
        trackers_poll(T.fleet.t, T.fleet.n, 10);
}

/* Every packet of every device is stored exactly once: one row per tag, and no other row. */
static void fleet_check_once(void)
{
    const struct fleet *f = &T.fleet;
    long long want = (long long)f->n * f->per;
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM (SELECT io->>'%d' FROM telemetry.positions_io GROUP BY 1 "
             "HAVING count(*) = 1) o",
             TAG_IO_ID);
    long long once = pgtest_scalar_ll(T.gw.db.conn, sql);
    long long rows = gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions");
    CHECK(once == want && rows == want, "%lld tags stored once, %lld rows, %lld packets", once,
          rows, want);
    for (unsigned d = 0; d < f->n; d++)
        CHECK(f->t[d].bad_acks == 0 && f->t[d].junk == 0, "device %u: a wrong ACK", d);
}

/* Every device sends until its first packet is acknowledged. */
static void fleet_first_acks(void)
{
    const struct fleet *f = &T.fleet;
    uint64_t end = device_now_ms() + 30000;
    bool all = false;
    while (!all && device_now_ms() < end) {
        trackers_poll(f->t, f->n, 10);
        all = true;
        for (unsigned d = 0; d < f->n; d++)
            all &= f->t[d].acked >= 1;
    }
    CHECK(all, "not every device got its first ACK");
}

/* Device 0's device_state row is held FOR UPDATE by another session while all devices send. */
static void test_row_lock(void **state)
{
    (void)state;
    unsigned hold_ms = env_u("AVLGATE_STALL_HOLD_S", 6) * 1000;
    unsigned timeout_ms = env_u("AVLGATE_STALL_TIMEOUT_MS", 1000);
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%u", timeout_ms);
    begin("row_lock", (const char *const[]){"--txn-timeout-ms", timeout, NULL});
    /* enough packets to keep sending through the hold and a while after it */
    fleet_make(FLEET_DEVICES, (hold_ms + 4000) / FLEET_GAP_MS + 2);
    struct fleet *f = &T.fleet;
    uint64_t x = fleet_imei(0);

    fleet_first_acks(); /* device 0's row exists */

    T.side = pgtest_connect(&T.gw.db);
    pgtest_exec(T.side, "BEGIN");
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT imei FROM public.device_state WHERE imei = %" PRIu64 " FOR UPDATE", x);
    PQclear(pgtest_query(T.side, sql));
    unsigned x_acked_at_lock = f->t[0].acked;
    fleet_poll((int)hold_ms, false);
    uint64_t wait_held = others_longest_wait_ms();
    unsigned x_acked_held = f->t[0].acked;
    pgtest_exec(T.side, "COMMIT");
    uint64_t released_ms = device_now_ms();

    /* device 0 waits out its deferral (at most 30 s, batch.h's DEFER_BACKOFF_MAX_MS), then
     * sends the packets it could not */
    fleet_poll(30000 + (int)f->per * (FLEET_GAP_MS + 200) + 10000, true);
    CHECK(fleet_done() == f->n, "%u of %u devices done after the release", fleet_done(), f->n);
    uint64_t x_first_ack_ms = f->pkts[x_acked_held].acked_ms;
    uint64_t wait_all = others_longest_wait_ms();
    double timed_out = metric("avlgate_batches_timed_out_total", NULL, NULL);
    double deferred = metric("avlgate_packets_deferred_total", NULL, NULL);
    print_message("row lock held %u ms, --txn-timeout-ms %u, %u devices: the others' longest ACK "
                  "wait %" PRIu64 " ms while it was held (%" PRIu64
                  " ms over the run); the locked device acked %u packets under the lock, its "
                  "next %" PRIu64 " ms after the release; %.0f batches timed out, %.0f packets "
                  "deferred\n",
                  hold_ms, timeout_ms, f->n, wait_held, wait_all, x_acked_held - x_acked_at_lock,
                  x_first_ack_ms - released_ms, timed_out, deferred);
    CHECK(x_acked_held <= x_acked_at_lock + 1, "the locked device was acknowledged under the lock");
    CHECK(timed_out >= 1 && deferred >= 1, "no timeout seen");
    /* the goal is the timeout plus a batch; generous for a Debug build on a busy machine */
    CHECK(wait_all <= timeout_ms + 4000, "an ACK of another device waited %" PRIu64 " ms",
          wait_all);
    fleet_check_once();
}

/* ---- group_commit ------------------------------------------------------------------------- */

/* Another session holds SHARE on telemetry.positions for 2 s (every COPY waits for it) while 100
 * devices send, each its next packet 200 + 15 d ms after an ACK (spread over 1.7 s). Once it is
 * released, the packets that arrived meanwhile are acknowledged after at most four commits:
 * on each of the two shards the stalled transaction and one more holding the rest, because
 * the filling batch is not sealed while a transaction is ahead of it. Sealed every --batch-ms
 * instead, they would queue as one transaction per 10 ms slice until the ring (--batches 16 here)
 * is full. */
static void test_group_commit(void **state)
{
    (void)state;
    begin("group_commit", (const char *const[]){"--batches", "16", NULL});
    fleet_make(FLEET_DEVICES, 6);
    struct fleet *f = &T.fleet;
    for (unsigned d = 0; d < f->n; d++) /* next packets spread over 1.7 s, not in one burst */
        f->t[d].gap_ms = 200 + 15 * d;
    fleet_first_acks();
    T.side = pgtest_connect(&T.gw.db);
    pgtest_exec(T.side, "BEGIN");
    pgtest_exec(T.side, "LOCK TABLE telemetry.positions IN SHARE MODE");
    double committed_at_lock = metric("avlgate_batches_committed_total", NULL, NULL);
    fleet_poll(2000, false); /* every device's next packet arrives */
    unsigned acked_at[FLEET_DEVICES];
    for (unsigned d = 0; d < f->n; d++)
        acked_at[d] = f->t[d].acked;
    double committed_held = metric("avlgate_batches_committed_total", NULL, NULL);
    pgtest_exec(T.side, "COMMIT");
    uint64_t released_ms = device_now_ms(), end = released_ms + 5000;
    unsigned waiting = 0;
    do {
        trackers_poll(f->t, f->n, 5);
        waiting = 0;
        for (unsigned d = 0; d < f->n; d++)
            waiting += f->t[d].acked == acked_at[d];
    } while (waiting > 0 && device_now_ms() < end);
    uint64_t all_acked_ms = device_now_ms() - released_ms;
    double commits = metric("avlgate_batches_committed_total", NULL, NULL) - committed_held;
    print_message("group commit: the packets of %u devices that waited 2 s acknowledged %" PRIu64
                  " ms after the release, in %.0f commits (%.0f while held)\n",
                  f->n, all_acked_ms, commits, committed_held - committed_at_lock);
    CHECK(waiting == 0, "%u devices still wait 5 s after the release", waiting);
    CHECK(commits >= 1 && commits <= 4, "%.0f commits for the waiting packets", commits);
    fleet_poll(20000, true);
    CHECK(fleet_done() == f->n, "%u of %u devices done", fleet_done(), f->n);
    fleet_check_once();
}

/* ---- load_refused -------------------------------------------------------------------------- */

/* device_state_claim (007: the state load) replaced by one of the same signature and result
 * that counts its calls (a sequence: not rolled back) and fails as a revoked EXECUTE would. */
static const char REFUSE_SQL[] =
    "CREATE SEQUENCE public.stall_load_calls;"
    "ALTER FUNCTION telemetry.device_state_claim(bigint, bigint, boolean)"
    " RENAME TO device_state_claim_saved;"
    "CREATE FUNCTION telemetry.device_state_claim(p_imei bigint, p_owner bigint,"
    " p_known_only boolean)"
    " RETURNS TABLE (last_ts_ms bigint, dedup bytea, enabled boolean, owner bigint,"
    " claimed boolean) LANGUAGE plpgsql AS $$"
    " BEGIN PERFORM nextval('public.stall_load_calls');"
    " RAISE EXCEPTION 'permission denied for function device_state_claim'"
    " USING ERRCODE = '42501';"
    " END $$;";
static const char RESTORE_SQL[] =
    "DROP FUNCTION telemetry.device_state_claim(bigint, bigint, boolean);"
    "ALTER FUNCTION telemetry.device_state_claim_saved(bigint, bigint, boolean)"
    " RENAME TO device_state_claim;";

static long long load_calls(void)
{
    return gwproc_sql_ll(&T.gw, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                                "FROM public.stall_load_calls");
}

/* A state load the database refuses is retried with backoff while the device waits; once the
 * function is back, the device is answered and its packet stored. */
static void test_load_refused(void **state)
{
    (void)state;
    enum { REFUSED_MS = 3000 };
    begin("load_refused", NULL);
    pgtest_exec(T.gw.db.conn, REFUSE_SQL);
    struct device d;
    device_init(&d, T.gw.port, IMEI_BASE);
    CHECK(device_connect(&d, WAIT_MS) == 0, "connect");
    uint64_t t0 = device_now_ms();
    int rc = device_handshake(&d, REFUSED_MS);
    CHECK(rc == -ETIMEDOUT, "the handshake was answered (%d) while the load fails", rc);
    long long calls = load_calls();
    double secs = (double)(device_now_ms() - t0) / 1000;
    double failed = metric("avlgate_state_loads_failed_total", NULL, NULL);
    print_message("state load refused: %lld loads in %.1f s (%.1f/s), %.0f counted failed\n", calls,
                  secs, (double)calls / secs, failed);
    CHECK(calls >= 2, "the refused load was not retried (%lld calls)", calls);
    CHECK(calls <= 5 * secs + 3, "%lld loads in %.1f s: not backed off", calls, secs);
    CHECK(failed >= (double)calls - 1 && failed <= (double)calls,
          "%.0f failures counted for "
          "%lld loads",
          failed, calls);
    CHECK(gwproc_log_count(&T.gw, "state load failed; retrying with backoff") >= 1,
          "the failure was not logged");

    pgtest_exec(T.gw.db.conn, RESTORE_SQL);
    uint64_t t1 = device_now_ms();
    uint8_t answer = 0;
    CHECK(device_read(&d, &answer, 1, 5000 + WAIT_MS) == 0 && answer == 1,
          "no 0x01 after the function came back");
    print_message("state load refused: answered %" PRIu64 " ms after the function came back\n",
                  device_now_ms() - t1);
    uint8_t pkt[PKT_BYTES];
    size_t len =
        gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 1000, 1, 2, pkt, sizeof pkt);
    gwproc_send_acked(&d, pkt, len, 2, 0, 0);
    device_close(&d);
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions") == 2, "rows");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_out_of_range, teardown),
        cmocka_unit_test_teardown(test_load_refused, teardown),
        cmocka_unit_test_teardown(test_row_lock, teardown),
        cmocka_unit_test_teardown(test_group_commit, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
