/* test_instances.c — exactly once across two gateway instances (schema 007's owner fence), with
 * the real PostgreSQL fixture: two `avlgate run` child processes (tests/support/gwproc.h,
 * instances A and B on ports of their own) writing into the same database, and one tracker that
 * moves from A to B the way a tracker behind a NAT does: its connection to A dies silently (the
 * socket stays open on A's side), it connects to B and re-sends the packet A never acknowledged.
 *
 * Cases:
 *   a_commits_late   A's transaction holding the packet is held back by a row lock another
 *                    session takes on the device's device_state row; meanwhile the tracker
 *                    connects to B (whose state load waits for the same row) and, once the lock
 *                    is released and B answers, re-sends. Whichever of A's upsert and B's claim
 *                    gets the row first, the packet's records are stored exactly once.
 *   b_claims_first   A's COPY is slowed (a row trigger that sleeps, before A's upsert takes the
 *                    row); the tracker connects to B, which takes the device over at once, and
 *                    re-sends: B stores the records. A's upsert then finds another owner
 *                    (SQLSTATE 23AV0): A stores nothing, never acknowledges, counts the packet
 *                    as moved and closes its stale connection. Stored exactly once.
 *   back_to_a        A -> B -> A while A's first batch still holds the packet (slow COPY): A's
 *                    newer connection re-sends it under a third token and stores it; refusing
 *                    the old batch's copy leaves the newer connection and its window alone
 *                    (its ACK comes), and a further re-send is a duplicate. Stored once.
 *   row_locked       another session holds the device's row: its state load gives up after the
 *                    claim's 2 s lock timeout and the device is closed unanswered, another
 *                    device is answered meanwhile, and once the row is free the device connects.
 * Every wait is bounded; each gateway's output goes to test_instances_<case>[_b].log in the
 * build directory, and a failing check prints A's tail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/avl.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"

enum { WAIT_MS = GWPROC_WAIT_MS, SLOW_WAIT_MS = 20000, SLOW_EVENT = 4242 };

#define IMEI UINT64_C(356307042463001)

static struct {
    struct gwproc a, b;
    PGconn *locker; /* the session that holds the device's row */
    char name_b[64];
} T;

/* A and B on one database; extra: A's and B's further options. */
static void begin(const char *name, const char *const *extra)
{
    memset(&T, 0, sizeof T);
    snprintf(T.name_b, sizeof T.name_b, "%s_b", name);
    gwproc_begin(&T.b, "test_instances", T.name_b, "test_instances_b");
    pgtest_db_drop(&T.b.db); /* B writes into A's database */
    gwproc_begin(&T.a, "test_instances", name, "test_instances_a");
    T.b.db = T.a.db;
    T.b.db.conn = NULL;
    gwproc_start(&T.a, extra);
    gwproc_start(&T.b, extra);
}

static int teardown(void **state)
{
    (void)state;
    if (T.locker)
        PQfinish(T.locker);
    T.b.db.name[0] = '\0'; /* A's: A drops it */
    gwproc_end(&T.b);
    gwproc_end(&T.a);
    return 0;
}

/* Backends of the case's database waiting for a lock. */
static long long lock_waiters(void)
{
    return gwproc_sql_ll(&T.a, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                               "current_database() AND wait_event_type = 'Lock'");
}

static void wait_lock_waiters(long long n)
{
    uint64_t deadline = device_now_ms() + WAIT_MS;
    while (lock_waiters() < n && device_now_ms() < deadline)
        device_sleep_ms(10); /* bounded polling of the server */
    CHECK(lock_waiters() >= n, "%lld backends wait for the row, want %lld", lock_waiters(), n);
}

static void sql(PGconn *c, const char *q)
{
    PGresult *r = PQexec(c, q);
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s",
          q, PQresultErrorMessage(r));
    PQclear(r);
}

/* Another session (T.locker) takes the device's device_state row and holds it, in a transaction
 * the case ends with sql(T.locker, "ROLLBACK"). */
static void lock_row(void)
{
    T.locker = PQconnectdb(T.a.db.conninfo);
    CHECK(PQstatus(T.locker) == CONNECTION_OK, "locker: %s", PQerrorMessage(T.locker));
    sql(T.locker, "BEGIN");
    char q[160];
    snprintf(q, sizeof q, "SELECT 1 FROM public.device_state WHERE imei = %" PRIu64 " FOR UPDATE",
             IMEI);
    sql(T.locker, q);
}

/* Records of imei with tags [tag0, tag0 + n) stored, counted. */
static long long stored(uint32_t tag0, unsigned n)
{
    return gwproc_sql_ll(&T.a,
                         "SELECT count(*) FROM telemetry.positions_io WHERE imei = %" PRIu64
                         " AND telemetry.io_value(io_ids, io_vals, %d) BETWEEN %u AND %u",
                         IMEI, GWPROC_TAG_IO_ID, tag0, tag0 + n - 1);
}

/* Sends the IMEI on d (connected) without waiting for the answer. */
static void send_imei(struct device *d)
{
    uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
    int n = avl_encode_imei(hs, sizeof hs, d->imei);
    CHECK(n > 0 && device_send(d, hs, (size_t)n, 0, 0) == 0, "send the IMEI");
}

/* The slow COPY trigger: a row with event SLOW_EVENT sleeps 2 s as it is inserted, before the
 * transaction's upsert takes the device's row. */
static void slow_copy_trigger(void)
{
    char q[512];
    snprintf(q, sizeof q,
             "CREATE FUNCTION public.slow_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF "
             "NEW.event_id = %d THEN PERFORM pg_sleep(2); END IF; RETURN NULL; END $$; CREATE "
             "TRIGGER slow_copy AFTER INSERT ON telemetry.positions FOR EACH ROW EXECUTE "
             "FUNCTION public.slow_copy()",
             SLOW_EVENT);
    pgtest_exec(T.a.db.conn, q);
}

/* One slow record of tag `tag` as a packet in pkt; returns its length. */
static size_t slow_packet(uint32_t tag, uint8_t *pkt, size_t cap)
{
    struct gwproc_rspec r = {.ts_ms = gwproc_recent_ts_ms(&T.a),
                             .tag = tag,
                             .satellites = 9,
                             .event_id = SLOW_EVENT,
                             .lon_e7 = 250000000,
                             .lat_e7 = 546000000};
    return gwproc_encode_tagged(AVL_CODEC_8E, &r, 1, pkt, cap);
}

static void test_a_commits_late(void **state)
{
    (void)state;
    const char *extra[] = {"--txn-timeout-ms", "30000", NULL};
    begin("a_commits_late", extra);
    struct device on_a, on_b;
    uint8_t first[512], pkt[1024];
    gwproc_dev_open(&T.a, &on_a, IMEI);
    uint64_t ts = gwproc_recent_ts_ms(&T.a);
    size_t n = gwproc_encode_series(AVL_CODEC_8E, ts, 1000, 1, 2, first, sizeof first);
    gwproc_send_acked(&on_a, first, n, 2, 0, 0);

    lock_row();
    n = gwproc_encode_series(AVL_CODEC_8E, ts + 10000, 1000, 100, 3, pkt, sizeof pkt);
    CHECK(device_send(&on_a, pkt, n, 0, 0) == 0, "send the packet to A");
    wait_lock_waiters(1); /* A's transaction: its rows copied, its upsert waiting */

    device_init(&on_b, T.b.port, IMEI); /* on_a's socket stays open: a NAT forgot it */
    CHECK(device_connect(&on_b, WAIT_MS) == 0, "connect to B");
    send_imei(&on_b);
    wait_lock_waiters(2); /* and B's state load */
    sql(T.locker, "ROLLBACK");

    uint8_t answer = 0;
    CHECK(device_read(&on_b, &answer, 1, WAIT_MS) == 0 && answer == 1, "B answered %u", answer);
    gwproc_send_acked(&on_b, pkt, n, 3, 0, 0); /* the re-send: acknowledged in full */
    CHECK(stored(100, 3) == 3, "the packet's records stored %lld times over, want once each",
          stored(100, 3));
    CHECK(stored(1, 2) == 2, "the first packet's records stored once");
    long long moved = gwproc_log_count(&T.a, "taken over by another connection");
    print_message("a_commits_late: %s\n", moved ? "B's claim got the row first; A's batch was "
                                                  "fenced off and B stored the re-send"
                                                : "A committed first; B's load read A's "
                                                  "window and dropped the re-send");
    device_close(&on_a);
    device_close(&on_b);
}

static void test_b_claims_first(void **state)
{
    (void)state;
    begin("b_claims_first", NULL);
    slow_copy_trigger();
    struct device on_a, on_b;
    gwproc_dev_open(&T.a, &on_a, IMEI);
    uint8_t pkt[512];
    size_t n = slow_packet(500, pkt, sizeof pkt);
    CHECK(device_send(&on_a, pkt, n, 0, 0) == 0, "send the packet to A");
    gwproc_wait_backend_sleeping(&T.a); /* A's COPY, before its upsert */

    gwproc_dev_open(&T.b, &on_b, IMEI); /* B takes the device over: no lock is held */
    CHECK(device_send(&on_b, pkt, n, 0, 0) == 0, "re-send the packet to B");
    uint32_t records = 0;
    CHECK(device_wait_ack(&on_b, SLOW_WAIT_MS, &records) == 0 && records == 1,
          "B acknowledged %u records", records);
    gwproc_expect_closed_silently(&on_a, SLOW_WAIT_MS, "A's stale connection, fenced off");
    gwproc_wait_log(&T.a, "taken over by another connection", 1, WAIT_MS);
    CHECK(stored(500, 1) == 1, "the record stored %lld times, want once", stored(500, 1));
    CHECK(gwproc_sql_ll(&T.a, "SELECT count(*) FROM telemetry.positions") == 1,
          "nothing else stored");
    device_close(&on_a);
    device_close(&on_b);
}

/* A -> B -> A while A still holds the first packet: A's old batch is fenced off, and refusing it
 * must not touch the newer connection's window or connection on A, which stored the re-send. */
static void test_back_to_a(void **state)
{
    (void)state;
    begin("back_to_a", NULL);
    slow_copy_trigger();
    struct device first, on_b, again, last;
    uint8_t pkt[512];
    size_t n = slow_packet(700, pkt, sizeof pkt);
    gwproc_dev_open(&T.a, &first, IMEI);
    CHECK(device_send(&first, pkt, n, 0, 0) == 0, "send the packet to A");
    gwproc_wait_backend_sleeping(&T.a);  /* A's first batch, in its COPY */
    gwproc_dev_open(&T.b, &on_b, IMEI);  /* B takes the device over ... */
    device_close(&on_b);                 /* ... and loses it at once */
    gwproc_dev_open(&T.a, &again, IMEI); /* back on A: taken over again, a third token */
    CHECK(device_send(&again, pkt, n, 0, 0) == 0, "re-send the packet to A");
    uint32_t records = 0;
    CHECK(device_wait_ack(&again, SLOW_WAIT_MS, &records) == 0 && records == 1,
          "A's newer connection acknowledged %u records", records);
    gwproc_wait_log(&T.a, "taken over by another connection", 1, WAIT_MS);
    CHECK(stored(700, 1) == 1, "the record stored %lld times, want once", stored(700, 1));
    device_close(&again); /* the ACK lost after all: the device re-sends once more */
    gwproc_dev_open(&T.a, &last, IMEI);
    gwproc_send_acked(&last, pkt, n, 1, 0, 0);
    CHECK(stored(700, 1) == 1, "after another re-send: stored %lld times", stored(700, 1));
    device_close(&first);
    device_close(&last);
}

/* A device whose device_state row another session holds: its state load gives up after the
 * claim's 2 s lock timeout and the device is closed unanswered, while another device of the same
 * instance is answered meanwhile; once the row is free, the device connects. */
static void test_row_locked(void **state)
{
    (void)state;
    begin("row_locked", NULL);
    struct device d, other;
    gwproc_dev_open(&T.a, &d, IMEI); /* its row exists now */
    device_close(&d);
    lock_row();
    device_init(&d, T.a.port, IMEI);
    CHECK(device_connect(&d, WAIT_MS) == 0, "connect");
    send_imei(&d);
    uint64_t t0 = device_now_ms();
    gwproc_dev_open(&T.a, &other, IMEI + 1); /* answered (behind the stuck load: 2 s at most) */
    gwproc_expect_closed_silently(&d, WAIT_MS, "the device whose row is locked");
    print_message("row_locked: closed after %" PRIu64 " ms; another device answered meanwhile\n",
                  device_now_ms() - t0);
    gwproc_wait_log(&T.a, "the device's row stayed locked", 1, WAIT_MS);
    device_close(&d);
    sql(T.locker, "ROLLBACK");
    gwproc_dev_open(&T.a, &d, IMEI);
    device_close(&d);
    device_close(&other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_a_commits_late, teardown),
        cmocka_unit_test_teardown(test_b_claims_first, teardown),
        cmocka_unit_test_teardown(test_back_to_a, teardown),
        cmocka_unit_test_teardown(test_row_locked, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
