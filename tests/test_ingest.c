/* test_ingest.c — the whole gateway against the real PostgreSQL fixture: handshakes, ACK after
 * commit, duplicates, backpressure, database outages, refused packets.
 *
 * Each case makes a database of its own (tests/support/pgtest.h) with the schema applied,
 * starts the real `avlgate run` binary as a child process on a free loopback port with two
 * shards, and plays Teltonika devices over TCP (tests/support/device.h): blocking devices for
 * step-by-step cases, poll()-driven trackers that re-send unacknowledged packets across
 * reconnects for the fleet cases. Rows are read back with libpq.
 *
 * Rows are recognisable: every tagged record carries IO element 200 (u32) = a tag that names
 * its device, packet and record, so counts are exact per packet and a duplicate shows as a
 * repeated tag.
 *
 * Cases: every codec with every column; fragmented and coalesced input; an ACK only once the
 * rows are visible; newest-first, equal and pre-fix timestamps; a re-send on a replacing
 * connection while the original is uncommitted; a poison packet; hostile input beside good
 * devices; SIGKILL and restarts; SIGTERM drain; PostgreSQL stopped mid-stream; and two races
 * around a replacing connection's state (a state load older than a commit, a COMMIT whose
 * outcome is unknown).
 *
 * One case stops the fixture's PostgreSQL server and starts it again (same directory, same
 * port): ctest runs this test with RUN_SERIAL, and the teardown restarts the server if a case
 * failed while it was down. Every wait is bounded; a wait that runs out is a failure. The
 * gateway's output goes to test_ingest_<case>.log in the build directory; a failing check
 * prints its tail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec/avl.h"
#include "gateway/router.h"
#include "loadgen/packetgen.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/pgtest.h"
#include "tests/support/testutil.h"

enum {
    SHARDS = GWPROC_SHARDS,
    WAIT_MS = GWPROC_WAIT_MS,
    TAG_IO_ID = GWPROC_TAG_IO_ID,
    FLEET_MAX = 8,
    FLEET_PKTS_MAX = 48,
    PKT_BYTES = 1024,
    IDLE_SOCKETS = 300,
};

#define IMEI_BASE UINT64_C(356307042441013)

/* ---- the case's context: everything the teardown must undo -------------------------------- */

struct fleet;

static struct {
    struct gwproc gw; /* the gateway and the case's database (tests/support/gwproc.h) */
    struct fleet *fleet;
    struct router router;
    void *router_store;
} T;

static void begin(const char *name)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_ingest", name, "test_ingest");
    size_t bytes = router_storage_bytes(SHARDS, ROUTER_VNODES_DEFAULT);
    T.router_store = aligned_alloc(64, (bytes + 63) / 64 * 64);
    assert_non_null(T.router_store);
    assert_int_equal(router_init(&T.router, SHARDS, ROUTER_VNODES_DEFAULT, T.router_store,
                                 (bytes + 63) / 64 * 64),
                     0);
}

static void fleet_free(struct fleet *f);

static int teardown(void **state)
{
    (void)state;
    gwproc_end(&T.gw);
    fleet_free(T.fleet);
    T.fleet = NULL;
    free(T.router_store);
    T.router_store = NULL;
    return 0;
}

/* ---- SQL ---------------------------------------------------------------------------------- */

static long long rows_of(uint64_t imei)
{
    return gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions WHERE imei = %" PRIu64,
                         imei);
}

static long long rows_total(void)
{
    return gwproc_sql_ll(&T.gw, "SELECT count(*) FROM telemetry.positions");
}

/* ---- rows compared with decoded records --------------------------------------------------- */

/* Decodes our own frame and checks every record against the database. Returns N. */
static unsigned expect_rows_of_frame(uint64_t imei, const uint8_t *frame, size_t len)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    int rc = avl_decode_tcp(frame, len, &pkt, recs);
    assert_int_equal(rc, 0);
    for (unsigned i = 0; i < pkt.records_len; i++)
        gwproc_expect_row(&T.gw, imei, &recs[i]);
    return pkt.records_len;
}

/* ---- fleets of trackers ------------------------------------------------------------------- */

struct fleet {
    unsigned n, per, records;
    struct tracker t[FLEET_MAX];
    uint64_t imei[FLEET_MAX];
    struct tracker_pkt pkts[FLEET_MAX][FLEET_PKTS_MAX];
    uint8_t bytes[FLEET_MAX][FLEET_PKTS_MAX][PKT_BYTES];
};

static void fleet_free(struct fleet *f)
{
    if (!f)
        return;
    for (unsigned i = 0; i < f->n; i++)
        tracker_stop(&f->t[i]);
    free(f);
}

/* The tag of record r of packet p of device d. */
static uint32_t fleet_tag(unsigned d, unsigned p, unsigned r)
{
    return (d + 1) * 1000000u + p * 1000u + r;
}

/* n trackers of per packets of `records` tagged records each, codecs 8, 8E, 16 in turn,
 * unique increasing timestamps. */
static struct fleet *fleet_make(unsigned n, unsigned per, unsigned records)
{
    assert_true(n <= FLEET_MAX && per <= FLEET_PKTS_MAX && records < 1000);
    struct fleet *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->n = n;
    f->per = per;
    f->records = records;
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    uint64_t ts0 = gwproc_recent_ts_ms(&T.gw);
    for (unsigned d = 0; d < n; d++) {
        f->imei[d] = IMEI_BASE + 1000 * d;
        for (unsigned p = 0; p < per; p++) {
            uint64_t ts = ts0 + (uint64_t)(p * records) * 1000;
            size_t len = gwproc_encode_series(codecs[(p + d) % 3], ts, 1000, fleet_tag(d, p, 0),
                                              records, f->bytes[d][p], PKT_BYTES);
            f->pkts[d][p] =
                (struct tracker_pkt){.bytes = f->bytes[d][p], .len = len, .records = records};
        }
        tracker_init(&f->t[d], T.gw.port, f->imei[d], f->pkts[d], per);
    }
    T.fleet = f;
    return f;
}

static unsigned fleet_acked(const struct fleet *f)
{
    unsigned a = 0;
    for (unsigned d = 0; d < f->n; d++)
        a += f->t[d].acked;
    return a;
}

static unsigned fleet_min_acked(const struct fleet *f)
{
    unsigned m = UINT32_MAX;
    for (unsigned d = 0; d < f->n; d++)
        m = f->t[d].acked < m ? f->t[d].acked : m;
    return m;
}

static unsigned fleet_sends(const struct fleet *f)
{
    unsigned s = 0;
    for (unsigned d = 0; d < f->n; d++)
        for (unsigned p = 0; p < f->per; p++)
            s += f->pkts[d][p].sends;
    return s;
}

/* Polls the fleet until pred holds or timeout_ms passed; the predicate must hold then. */
static void fleet_until(struct fleet *f, bool (*pred)(const struct fleet *, unsigned), unsigned arg,
                        int timeout_ms, const char *what)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    while (!pred(f, arg) && device_now_ms() < deadline)
        trackers_poll(f->t, f->n, 20);
    CHECK(pred(f, arg), "%s: not reached within %d ms (acked %u of %u)", what, timeout_ms,
          fleet_acked(f), f->n * f->per);
}

static bool each_acked_at_least(const struct fleet *f, unsigned k)
{
    return fleet_min_acked(f) >= k;
}

static bool total_acked_at_least(const struct fleet *f, unsigned k)
{
    return fleet_acked(f) >= k;
}

static bool all_done(const struct fleet *f, unsigned unused)
{
    (void)unused;
    return fleet_acked(f) == f->n * f->per;
}

/* Polls the fleet for ms milliseconds (the gateway or the database is away meanwhile). */
static void fleet_for(struct fleet *f, int ms)
{
    uint64_t until = device_now_ms() + (uint64_t)ms;
    while (device_now_ms() < until)
        trackers_poll(f->t, f->n, 20);
}

/* What the database holds for the fleet, against what the devices were told:
 *  - every acknowledged packet is stored whole;
 *  - no packet is stored in part, and no record twice (tags are unique);
 *  - nothing but tagged rows of the fleet's packets;
 *  - with all: every packet is stored. */
static void fleet_check(const struct fleet *f, bool all)
{
    for (unsigned d = 0; d < f->n; d++) {
        char sql[512];
        snprintf(sql, sizeof sql,
                 "SELECT ((io->>'%u')::bigint %% 1000000) / 1000, count(*),"
                 " count(DISTINCT io->>'%u'), min((io->>'%u')::bigint / 1000000)"
                 " FROM telemetry.positions_io WHERE imei = %" PRIu64 " GROUP BY 1 ORDER BY 1",
                 TAG_IO_ID, TAG_IO_ID, TAG_IO_ID, f->imei[d]);
        PGresult *r = pgtest_query(T.gw.db.conn, sql);
        bool stored[FLEET_PKTS_MAX] = {false};
        long long rows = 0;
        for (int i = 0; i < PQntuples(r); i++) {
            CHECK(!PQgetisnull(r, i, 0), "device %u: a row without its tag", d);
            long long p = atoll(PQgetvalue(r, i, 0));
            long long n = atoll(PQgetvalue(r, i, 1)), distinct = atoll(PQgetvalue(r, i, 2));
            long long dev = atoll(PQgetvalue(r, i, 3));
            CHECK(p >= 0 && p < f->per && dev == d + 1, "device %u: a row of a packet never sent",
                  d);
            CHECK(n == distinct, "device %u packet %lld: %lld rows but %lld distinct: duplicates",
                  d, p, n, distinct);
            CHECK(n == f->records, "device %u packet %lld: %lld of its %u records stored", d, p, n,
                  f->records);
            stored[p] = true;
            rows += n;
        }
        PQclear(r);
        CHECK(rows == rows_of(f->imei[d]), "device %u: rows without a tag", d);
        const struct tracker *t = &f->t[d];
        for (unsigned p = 0; p < f->per; p++) {
            CHECK(!(p < t->acked) || stored[p],
                  "device %u packet %u was acknowledged but is not stored", d, p);
            CHECK(!all || stored[p], "device %u packet %u is not stored", d, p);
        }
        CHECK(t->bad_acks == 0 && t->junk == 0,
              "device %u: %u ACKs with a wrong count, %u stray bytes", d, t->bad_acks, t->junk);
    }
}

/* ---- cases -------------------------------------------------------------------------------- */

/* Every codec: hand-made records at the edges of each column, then a realistic packet; each
 * record's row has exactly the decoded values. */
static void test_codecs(void **state)
{
    (void)state;
    begin("codecs");
    gwproc_start(&T.gw, NULL);
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    static const uint8_t nx[5] = {0xde, 0xad, 0xbe, 0xef, 0x00};
    static struct pktgen_packet gp;
    static uint8_t frame[PKTGEN_FRAME_BYTES_MAX];
    long long expected_total = 0;
    for (unsigned c = 0; c < 3; c++) {
        uint8_t codec = codecs[c];
        uint64_t imei = IMEI_BASE + c;
        uint64_t ts = (uint64_t)T.gw.wall0_ms - 120000 + 123;
        struct avl_io_elem io[3][7];
        struct avl_record_src src[3];
        const struct avl_record recs[3] = {
            {.ts_ms = ts,
             .lon_e7 = -737654321,
             .lat_e7 = 407654321,
             .altitude_m = -15,
             .angle_deg = 359,
             .speed_kmh = 0,
             .satellites = 0,
             .priority = 0,
             .event_id = 0,
             .generation = 2},
            {.ts_ms = ts + 1000,
             .lon_e7 = 1799999999,
             .lat_e7 = -899999999,
             .altitude_m = INT16_MAX,
             .angle_deg = 0,
             .speed_kmh = 255,
             .satellites = 24,
             .priority = 2,
             .event_id = 240,
             .generation = 0},
            {.ts_ms = ts + 1999,
             .lon_e7 = 0,
             .lat_e7 = -1,
             .altitude_m = INT16_MIN,
             .angle_deg = 180,
             .speed_kmh = INT16_MAX,
             .satellites = 255,
             .priority = 1,
             .event_id = 11,
             .generation = 5},
        };
        for (unsigned i = 0; i < 3; i++) {
            unsigned k = 0;
            io[i][k++] = (struct avl_io_elem){.id = 1, .width = 1, .value = 255 - i};
            io[i][k++] = (struct avl_io_elem){.id = 66, .width = 2, .value = 65535};
            io[i][k++] =
                (struct avl_io_elem){.id = TAG_IO_ID, .width = 4, .value = 4000000000u + i};
            io[i][k++] = (struct avl_io_elem){.id = 78, .width = 8, .value = UINT64_MAX - i};
            if (codec != AVL_CODEC_8)
                io[i][k++] = (struct avl_io_elem){.id = 10000, .width = 2, .value = i};
            if (codec == AVL_CODEC_8E)
                io[i][k++] = (struct avl_io_elem){.id = 385, .width = 0, .nx_len = 5, .nx = nx};
            src[i] = (struct avl_record_src){.rec = recs[i], .io = io[i], .io_len = (uint16_t)k};
            src[i].rec.codec = codec;
        }
        uint8_t out[1024];
        int len = avl_encode_tcp(out, sizeof out, codec, src, 3);
        assert_true(len > 0);

        struct device d;
        gwproc_dev_open(&T.gw, &d, imei);
        gwproc_send_acked(&d, out, (size_t)len, 3, 0, 0);
        /* The ACK means committed: the rows are there now, with every column as sent. */
        CHECK(rows_of(imei) == 3, "codec %s: %lld rows after the ACK, want 3",
              avl_codec_name(codec), rows_of(imei));
        expect_rows_of_frame(imei, out, (size_t)len);

        /* A realistic packet of the same codec (FMB-style IO sets, NX for 8E). */
        struct pktgen g;
        pktgen_init(&g, 1000 + c);
        int flen = pktgen_packet_tcp(&g, PKTGEN_REALISTIC, codec, 12, &gp, frame, sizeof frame);
        assert_true(flen > 0);
        gwproc_send_acked(&d, frame, (size_t)flen, 12, 0, 0);
        CHECK(rows_of(imei) == 15, "codec %s: %lld rows, want 15", avl_codec_name(codec),
              rows_of(imei));
        expect_rows_of_frame(imei, frame, (size_t)flen);
        device_close(&d);
        expected_total += 15;
    }
    CHECK(rows_total() == expected_total, "%lld rows in all, want %lld", rows_total(),
          expected_total);
    /* device_state follows the newest record of each device. */
    CHECK(gwproc_sql_ll(&T.gw,
                        "SELECT count(*) FROM public.device_state WHERE instance = 'test_ingest'"
                        " AND last_ts IS NOT NULL AND dedup IS NOT NULL") == 3,
          "device_state rows missing");
    struct gwproc_stats st = gwproc_term(&T.gw);
    CHECK(st.packets == 6 && st.stored == 45 && st.duplicates == 0 && st.acked == 6 &&
              st.invalid == 0,
          "counters: packets %lld stored %lld duplicates %lld acked %lld invalid %lld", st.packets,
          st.stored, st.duplicates, st.acked, st.invalid);
}

/* Connects imei and sends its handshake in pieces of `piece` bytes; the answer must be 0x01. */
static void open_fragmented(struct device *d, uint64_t imei, size_t piece)
{
    device_init(d, T.gw.port, imei);
    int rc = device_connect(d, WAIT_MS);
    CHECK(rc == 0, "connect: %s", strerror(-rc));
    uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
    int hs_len = avl_encode_imei(hs, sizeof hs, imei);
    CHECK(device_send(d, hs, (size_t)hs_len, piece, 2) == 0, "handshake send failed");
    uint8_t answer = 0;
    rc = device_read(d, &answer, 1, WAIT_MS);
    CHECK(rc == 0 && answer == 0x01,
          "imei %" PRIu64 ": handshake in pieces of %zu: rc %d (%s) answer %u", imei, piece, rc,
          rc < 0 ? strerror(-rc) : "", answer);
}

/* Fragmented and coalesced input: the handshake byte by byte and in two pieces (on both
 * shards: the accepting shard hands most of them to the owner after reassembling), a packet
 * byte by byte, one cut every 7 bytes, three packets and keep-alives in one write, a write
 * that ends inside a packet, and a packet larger than a receive buffer. Every ACK in order;
 * every row exact. */
static void test_fragmented_coalesced(void **state)
{
    (void)state;
    begin("fragments");
    gwproc_start(&T.gw, (const char *const[]){"--buf-bytes", "1024", NULL});
    /* Each connection lands on either shard (SO_REUSEPORT), and each IMEI is owned by one:
     * twelve handshakes make a reassembled handshake that is handed off all but certain. */
    long long want = 0;
    for (unsigned i = 0; i < 12; i++) {
        struct device h;
        open_fragmented(&h, IMEI_BASE + 3000 + i, i % 2 ? 1 : 9);
        uint8_t p[PKT_BYTES];
        size_t l = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 1000,
                                        30000 + i * 10, 2, p, sizeof p);
        gwproc_send_acked(&h, p, l, 2, l / 2, 2);
        device_close(&h);
        want += 2;
    }
    CHECK(rows_total() == want, "%lld rows, want %lld", rows_total(), want);

    uint64_t imei = IMEI_BASE + 77;
    struct device d;
    open_fragmented(&d, imei, 1);
    int rc;

    static struct pktgen_packet gp;
    static uint8_t pk[8][PKTGEN_FRAME_BYTES_MAX];
    size_t len[8];
    unsigned recs[8] = {6, 9, 3, 5, 7, 4, 8, 60};
    struct pktgen g;
    pktgen_init(&g, 77);
    static const uint8_t codecs[3] = {AVL_CODEC_8E, AVL_CODEC_8, AVL_CODEC_16};
    for (unsigned i = 0; i < 8; i++) {
        int n = pktgen_packet_tcp(&g, PKTGEN_REALISTIC, codecs[i % 3], recs[i], &gp, pk[i],
                                  sizeof pk[i]);
        assert_true(n > 0);
        CHECK(gp.records_len == recs[i], "packetgen made %u records, asked %u", gp.records_len,
              recs[i]);
        len[i] = (size_t)n;
    }
    /* One byte at a time, then in pieces of 7 bytes. */
    gwproc_send_acked(&d, pk[0], len[0], recs[0], 1, 1);
    gwproc_send_acked(&d, pk[1], len[1], recs[1], 7, 1);

    /* Coalesced: FF p2 p3 FF FF p4 in one write: three ACKs, in order. */
    static uint8_t buf[4 * PKTGEN_FRAME_BYTES_MAX];
    size_t o = 0;
    buf[o++] = 0xFF;
    memcpy(buf + o, pk[2], len[2]);
    o += len[2];
    memcpy(buf + o, pk[3], len[3]);
    o += len[3];
    buf[o++] = 0xFF;
    buf[o++] = 0xFF;
    memcpy(buf + o, pk[4], len[4]);
    o += len[4];
    CHECK(device_send(&d, buf, o, 0, 0) == 0, "coalesced send failed");
    for (unsigned i = 2; i <= 4; i++) {
        uint32_t got = 0;
        rc = device_wait_ack(&d, WAIT_MS, &got);
        CHECK(rc == 0 && got == recs[i], "coalesced packet %u: rc %d ACK %u, want %u", i, rc, got,
              recs[i]);
    }
    /* A write that ends 13 bytes into the next packet, then the rest of it. */
    o = 0;
    memcpy(buf, pk[5], len[5]);
    o += len[5];
    memcpy(buf + o, pk[6], 13);
    o += 13;
    CHECK(device_send(&d, buf, o, 0, 0) == 0, "send failed");
    uint32_t got = 0;
    rc = device_wait_ack(&d, WAIT_MS, &got);
    CHECK(rc == 0 && got == recs[5], "packet 5: rc %d ACK %u", rc, got);
    CHECK(device_quiet(&d), "an ACK for a packet not yet complete");
    gwproc_send_acked(&d, pk[6] + 13, len[6] - 13, recs[6], 0, 0);
    /* 60 records, larger than a 1 KB receive buffer: reassembled across buffers. */
    CHECK(len[7] > 4096, "packet 7 is only %zu bytes", len[7]);
    gwproc_send_acked(&d, pk[7], len[7], recs[7], 0, 0);
    device_close(&d);

    long long mine = 0;
    for (unsigned i = 0; i < 8; i++)
        mine += expect_rows_of_frame(imei, pk[i], len[i]);
    CHECK(rows_of(imei) == mine, "%lld rows, want %lld", rows_of(imei), mine);
    CHECK(rows_total() == want + mine, "%lld rows in all, want %lld", rows_total(), want + mine);
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* An ACK only once the rows are visible: three devices, fifteen packets each, interleaved;
 * right after each ACK a separate connection sees every row of that device. */
static void test_ack_after_commit(void **state)
{
    (void)state;
    begin("ack_visible");
    gwproc_start(&T.gw, (const char *const[]){"--batch-ms", "20", NULL});
    enum { DEVS = 3, PKTS = 15, RECS = 4 };
    struct device d[DEVS];
    for (unsigned i = 0; i < DEVS; i++)
        gwproc_dev_open(&T.gw, &d[i], IMEI_BASE + 500 + i);
    PGconn *reader = pgtest_connect(&T.gw.db);
    uint64_t ts0 = gwproc_recent_ts_ms(&T.gw);
    for (unsigned p = 0; p < PKTS; p++) {
        for (unsigned i = 0; i < DEVS; i++) {
            uint8_t out[PKT_BYTES];
            size_t len = gwproc_encode_series(AVL_CODEC_8E, ts0 + p * RECS * 1000, 1000,
                                              fleet_tag(i, p, 0), RECS, out, sizeof out);
            CHECK(device_send(&d[i], out, len, 0, 0) == 0, "send failed");
        }
        for (unsigned i = 0; i < DEVS; i++) {
            uint32_t got = 0;
            int rc = device_wait_ack(&d[i], WAIT_MS, &got);
            CHECK(rc == 0 && got == RECS, "device %u packet %u: rc %d ACK %u", i, p, rc, got);
            char sql[256];
            snprintf(sql, sizeof sql,
                     "SELECT count(*) FROM telemetry.positions WHERE imei = %" PRIu64, d[i].imei);
            long long n = pgtest_scalar_ll(reader, sql);
            CHECK(n == (long long)(p + 1) * RECS,
                  "device %u: ACK of packet %u received, but only %lld rows visible (want %u)", i,
                  p, n, (p + 1) * RECS);
        }
    }
    PQfinish(reader);
    for (unsigned i = 0; i < DEVS; i++)
        device_close(&d[i]);
    CHECK(rows_total() == DEVS * PKTS * RECS, "%lld rows", rows_total());
}

/* The poison packet P, then a replacing connection that re-sends P at once, so both copies
 * share one batch (the second one all duplicates of the first). The database refuses P; the
 * state written for the device must not claim P's records, or a later re-send of P would be
 * taken for a duplicate and ACKed without rows. */
static void test_poison_resend_same_batch(void **state)
{
    (void)state;
    begin("poison_same_batch");
    gwproc_start(&T.gw, (const char *const[]){"--batch-ms", "300", NULL});
    pgtest_exec(T.gw.db.conn, "ALTER TABLE telemetry.positions ADD CONSTRAINT poison"
                              " CHECK (event_id <> 4242)");
    const uint64_t imei = IMEI_BASE + 4343;
    struct gwproc_rspec rs[2];
    for (unsigned i = 0; i < 2; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = gwproc_recent_ts_ms(&T.gw) + i * 1000,
                                      .tag = 43430 + i,
                                      .satellites = 6,
                                      .event_id = i == 1 ? 4242 : 0};
    uint8_t pb[PKT_BYTES];
    size_t lpb = gwproc_encode_tagged(AVL_CODEC_8E, rs, 2, pb, sizeof pb);

    struct device a, b, c;
    gwproc_dev_open(&T.gw, &a, imei);
    CHECK(device_send(&a, pb, lpb, 0, 0) == 0, "send");
    gwproc_dev_open(&T.gw, &b, imei); /* replaces a, within the same 300 ms batch */
    CHECK(device_send(&b, pb, lpb, 0, 0) == 0, "send");
    uint32_t got = 0;
    CHECK(device_wait_ack(&a, 1500, &got) != 0, "the first copy of the poison packet was ACKed");
    CHECK(device_wait_ack(&b, 1500, &got) != 0, "the re-sent poison packet was ACKed (%u)", got);
    device_close(&a);
    device_close(&b);
    gwproc_wait_log(&T.gw, "packet rejected by the database", 1, WAIT_MS);

    /* A third connection re-sends it: refused again, never taken for a duplicate. */
    gwproc_dev_open(&T.gw, &c, imei);
    CHECK(device_send(&c, pb, lpb, 0, 0) == 0, "send");
    gwproc_expect_closed_silently(&c, WAIT_MS, "the poison packet re-sent after the shared batch");
    CHECK(rows_of(imei) == 0, "poison rows stored");
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* --devices known: an IMEI enabled in public.devices is served; a disabled one and one that is
 * not listed get 0x00 to their handshake, are closed, and store nothing. */
static void test_devices_known(void **state)
{
    (void)state;
    begin("devices_known");
    const uint64_t known = IMEI_BASE + 700, disabled = IMEI_BASE + 701, unknown = IMEI_BASE + 702;
    PGconn *c = pgtest_connect(&T.gw.db);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO public.devices (imei, name, enabled) VALUES (%" PRIu64
             ", 'known', true), (%" PRIu64 ", 'disabled', false)",
             known, disabled);
    pgtest_exec(c, sql);
    PQfinish(c);
    gwproc_start(&T.gw, (const char *const[]){"--devices", "known", NULL});

    struct device ok;
    gwproc_dev_open(&T.gw, &ok, known);
    uint8_t out[PKT_BYTES];
    size_t len = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 1000,
                                      fleet_tag(0, 0, 0), 3, out, sizeof out);
    gwproc_send_acked(&ok, out, len, 3, 0, 0);
    device_close(&ok);

    const uint64_t refused[2] = {disabled, unknown};
    for (unsigned i = 0; i < 2; i++) {
        struct device d;
        device_init(&d, T.gw.port, refused[i]);
        CHECK(device_connect(&d, WAIT_MS) == 0, "connect");
        int answer = device_handshake(&d, WAIT_MS);
        CHECK(answer == 0, "IMEI %" PRIu64 ": handshake answered %d, want 0x00", refused[i],
              answer);
        size_t bytes = 0;
        CHECK(device_wait_closed(&d, WAIT_MS, &bytes, NULL) == 0,
              "IMEI %" PRIu64 ": not closed after 0x00", refused[i]);
        device_close(&d);
        CHECK(rows_of(refused[i]) == 0, "IMEI %" PRIu64 " stored rows", refused[i]);
    }
    CHECK(rows_of(known) == 3, "known device: %lld rows", rows_of(known));
}

/* SIGHUP with --devices known: connected devices no longer enabled in public.devices are
 * closed; enabled ones stay and keep being acknowledged. */
static void test_sighup_allowlist(void **state)
{
    (void)state;
    begin("sighup_allowlist");
    const uint64_t stays = IMEI_BASE + 710, revoked = IMEI_BASE + 711;
    PGconn *c = pgtest_connect(&T.gw.db);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO public.devices (imei, name, enabled) VALUES (%" PRIu64
             ", 'stays', true), (%" PRIu64 ", 'revoked', true)",
             stays, revoked);
    pgtest_exec(c, sql);
    gwproc_start(&T.gw, (const char *const[]){"--devices", "known", NULL});
    struct device a, b;
    gwproc_dev_open(&T.gw, &a, stays);
    gwproc_dev_open(&T.gw, &b, revoked);
    snprintf(sql, sizeof sql, "UPDATE public.devices SET enabled = false WHERE imei = %" PRIu64,
             revoked);
    pgtest_exec(c, sql);
    PQfinish(c);
    /* Without SIGHUP nothing happens to a connected device. */
    device_sleep_ms(300);
    CHECK(device_quiet(&b), "the disabled device was closed before SIGHUP");
    CHECK(kill(T.gw.pid, SIGHUP) == 0, "kill: %s", strerror(errno));
    size_t bytes = 0;
    CHECK(device_wait_closed(&b, WAIT_MS, &bytes, NULL) == 0, "not closed after SIGHUP");
    CHECK(bytes == 0, "%zu bytes to the revoked device", bytes);
    device_close(&b);
    uint8_t out[PKT_BYTES];
    size_t len = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 1000,
                                      fleet_tag(1, 0, 0), 2, out, sizeof out);
    gwproc_send_acked(&a, out, len, 2, 0, 0);
    device_close(&a);
    struct gwproc_stats st = gwproc_term(&T.gw);
    (void)st;
    CHECK(gwproc_log_count(&T.gw, "allow-list checked") >= 1, "no 'allow-list checked' line");
    CHECK(gwproc_log_count(&T.gw, "closed=1") == 1, "want one shard to say closed=1");
}

/* PostgreSQL stopped mid-stream and started again, twice: a fast shutdown, then an immediate
 * one (crash-like; commits in flight end with an unknown outcome). The row ring is tiny
 * (--batch-rows 4 --batches 2), so eight devices fill it and the shard pauses. No ACK while
 * the server is down; every ACKed row present afterwards; the devices' pending packets,
 * re-sent after reconnects, all get ACKed and are stored once. */
static void test_pg_outage(void **state)
{
    (void)state;
    begin("pg_outage");
    gwproc_start(&T.gw, (const char *const[]){"--batch-rows", "4", "--batches", "2", NULL});
    struct fleet *f = fleet_make(8, 30, 2);
    for (unsigned d = 0; d < f->n; d++) {
        f->t[d].gap_ms = 40;
        f->t[d].ack_timeout_ms = 1500;
        f->t[d].hs_timeout_ms = 1500;
        f->t[d].backoff_ms = 200;
    }
    static const char *const how[2] = {"stop", "kill"};
    for (unsigned k = 0; k < 2; k++) {
        fleet_until(f, each_acked_at_least, 4 + 8 * k, 30000, "traffic before the outage");
        gwproc_pgtmp(&T.gw, how[k]);
        uint64_t stopped = device_now_ms();
        unsigned acked_at_stop = fleet_acked(f);
        fleet_for(f, 3000);
        uint64_t restart = device_now_ms();
        /* Devices whose current packet went out and is still without its ACK. */
        unsigned pending = 0;
        for (unsigned d = 0; d < f->n; d++)
            pending += f->t[d].acked < f->per && f->pkts[d][f->t[d].acked].sends > 0;
        gwproc_pgtmp(&T.gw, "start");
        PQreset(T.gw.db.conn);
        CHECK(PQstatus(T.gw.db.conn) == CONNECTION_OK, "reconnect: %s",
              PQerrorMessage(T.gw.db.conn));
        CHECK(gwproc_running(&T.gw), "the gateway died while the database was down");

        /* An ACK that left before the server was gone may arrive a little later; after a
         * grace second nothing may be acknowledged until the server is back. */
        unsigned acked_while_down = 0;
        for (unsigned d = 0; d < f->n; d++)
            for (unsigned p = 0; p < f->per; p++) {
                uint64_t at = f->pkts[d][p].acked_ms;
                acked_while_down += at > stopped + 1000 && at < restart;
            }
        CHECK(acked_while_down == 0, "%s: %u packets acknowledged while the database was down",
              how[k], acked_while_down);
        CHECK(pending > 0, "%s: no packet waited for its ACK during the outage", how[k]);
        fleet_check(f, false); /* every ACK so far is backed by rows */
        printf("pg outage (%s): %u packets acked before it, %u devices waiting during it\n", how[k],
               acked_at_stop, pending);
    }
    fleet_until(f, all_done, 0, 60000, "every packet acknowledged after the outages");
    fleet_check(f, true);
    CHECK(rows_total() == (long long)f->n * f->per * f->records, "%lld rows in all", rows_total());
    unsigned resent = fleet_sends(f) - f->n * f->per;
    CHECK(resent > 0, "no packet was re-sent: the outages were not exercised");
    printf("pg outage: %u re-sends in all\n", resent);
}

/* SIGKILL: first a packet whose rows committed but whose ACK the device never read, re-sent
 * to a restarted gateway (ACKed, not stored again); then a fleet through three kills and
 * restarts (with short and long batches): no acknowledged row lost, no duplicate. */
static void test_gateway_sigkill(void **state)
{
    (void)state;
    begin("sigkill");
    gwproc_start(&T.gw, NULL);
    uint64_t imei = IMEI_BASE + 900;
    struct device d;
    gwproc_dev_open(&T.gw, &d, imei);
    uint8_t p1[PKT_BYTES], p2[PKT_BYTES];
    size_t l1 = gwproc_encode_series(AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw), 1000, 900000, 5, p1,
                                     sizeof p1);
    size_t l2 = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw) + 5000, 1000, 900100,
                                     3, p2, sizeof p2);
    CHECK(device_send(&d, p1, l1, 0, 0) == 0, "send failed");
    uint64_t deadline = device_now_ms() + WAIT_MS;
    while (rows_of(imei) < 5 && device_now_ms() < deadline)
        device_sleep_ms(10); /* bounded polling of the database */
    CHECK(rows_of(imei) == 5, "the packet was not committed");
    gwproc_kill(&T.gw); /* the device never reads that ACK */
    device_close(&d);
    gwproc_start(&T.gw, NULL);
    gwproc_dev_open(&T.gw, &d, imei);
    gwproc_send_acked(&d, p1, l1, 5, 0, 0);
    CHECK(rows_of(imei) == 5, "re-sent after a restart: %lld rows, want 5", rows_of(imei));
    gwproc_send_acked(&d, p2, l2, 3, 0, 0);
    CHECK(rows_of(imei) == 8, "%lld rows, want 8", rows_of(imei));
    device_close(&d);

    struct fleet *f = fleet_make(6, 40, 3);
    for (unsigned i = 0; i < f->n; i++) {
        f->t[i].gap_ms = 5;
        f->t[i].ack_timeout_ms = 1000;
        f->t[i].backoff_ms = 50;
    }
    static const char *const batch_args[3][3] = {
        {"--batch-ms", "40", NULL}, {"--batch-ms", "5", NULL}, {"--batch-ms", "40", NULL}};
    const unsigned total = f->n * f->per;
    for (unsigned k = 0; k < 3; k++) {
        fleet_until(f, total_acked_at_least, total * (k + 1) / 5, 30000, "traffic");
        gwproc_kill(&T.gw);
        fleet_check(f, false);
        fleet_for(f, 200); /* the devices see the loss and find the port closed */
        gwproc_start(&T.gw, batch_args[k]);
    }
    fleet_until(f, all_done, 0, 60000, "every packet acknowledged after the restarts");
    fleet_check(f, true);
    CHECK(rows_total() == 8 + (long long)total * f->records, "%lld rows in all", rows_total());
    printf("sigkill: %u re-sends over three kills\n", fleet_sends(f) - total);
}

/* A re-send on a replacing connection while the original packet is uncommitted (its batch's
 * COMMIT sleeps 1.5 s in a deferred trigger): the first connection is closed without an ACK,
 * the second gets its ACK once the original committed, the rows are stored once; a re-send on
 * the same connection too. (The packet must be seen in flight before the second connection
 * comes: a replacement closes the first connection, and bytes it had not yet delivered are
 * dropped, unacknowledged.) */
static void test_resend_replacing(void **state)
{
    (void)state;
    begin("replacing");
    gwproc_start(&T.gw, NULL);
    gwproc_slow_commit_trigger(&T.gw, "1.5");
    uint64_t imei = IMEI_BASE + 42;
    struct gwproc_rspec rs[4];
    for (unsigned i = 0; i < 4; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = gwproc_recent_ts_ms(&T.gw) + i * 1000,
                                      .tag = 420000 + i,
                                      .satellites = 7,
                                      .event_id = i == 2 ? GWPROC_SLOW_EVENT_ID : 0};
    uint8_t p[PKT_BYTES], q[PKT_BYTES];
    size_t lp = gwproc_encode_tagged(AVL_CODEC_16, rs, 4, p, sizeof p);
    size_t lq = gwproc_encode_series(AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw) + 4000, 1000, 420100,
                                     3, q, sizeof q);
    struct device a, b;
    gwproc_dev_open(&T.gw, &a, imei);
    CHECK(device_send(&a, p, lp, 0, 0) == 0, "send failed");
    gwproc_wait_backend_sleeping(&T.gw);
    uint64_t t0 = device_now_ms();
    gwproc_dev_open(&T.gw, &b, imei); /* replaces a */
    CHECK(device_now_ms() - t0 < 1000, "the replacing handshake waited for the commit");
    gwproc_expect_closed_silently(&a, WAIT_MS, "the replaced connection");
    CHECK(rows_of(imei) == 0, "committed already: the case needs a slower commit");
    gwproc_send_acked(&b, p, lp, 4, 0, 0);
    CHECK(rows_of(imei) == 4, "%lld rows after the re-send, want 4", rows_of(imei));
    gwproc_send_acked(&b, p, lp, 4, 0, 0); /* the same packet again on the same connection */
    CHECK(rows_of(imei) == 4, "%lld rows after the second re-send, want 4", rows_of(imei));
    gwproc_send_acked(&b, q, lq, 3, 0, 0);
    CHECK(rows_of(imei) == 7, "%lld rows, want 7", rows_of(imei));
    device_close(&b);
    expect_rows_of_frame(imei, p, lp);
    expect_rows_of_frame(imei, q, lq);
    /* Four packets taken (a's, b's two re-sends, q), 8 records counted as duplicates; a's ACK
     * found its connection gone. */
    struct gwproc_stats st = gwproc_term(&T.gw);
    CHECK(st.packets == 4 && st.records == 15 && st.stored == 7 && st.duplicates == 8 &&
              st.acked == 3 && st.invalid == 0,
          "counters: packets %lld records %lld stored %lld duplicates %lld acked %lld invalid "
          "%lld",
          st.packets, st.records, st.stored, st.duplicates, st.acked, st.invalid);
}

/* Newest-first packets, equal timestamps, pre-fix timestamps (0, 1970, the GPS epoch, no
 * satellites): nothing dropped, every timestamp exact; a re-send after a reconnect is not
 * stored again, but new records older than everything stored are. */
static void test_ordering(void **state)
{
    (void)state;
    begin("ordering");
    gwproc_start(&T.gw, NULL);
    uint64_t imei = IMEI_BASE + 7;
    uint64_t T0 = gwproc_recent_ts_ms(&T.gw);
    struct gwproc_rspec p1[3], p2[3], p3[4], p4[4], p5[2], p6[1];
    for (unsigned i = 0; i < 3; i++) {
        p1[i] =
            (struct gwproc_rspec){.ts_ms = T0 + 30000 - i * 10000, .tag = 100 + i, .satellites = 8};
        p2[i] = (struct gwproc_rspec){.ts_ms = T0 - i * 10000, .tag = 200 + i, .satellites = 8};
    }
    for (unsigned i = 0; i < 4; i++)
        p3[i] = (struct gwproc_rspec){
            .ts_ms = T0 + 40000, .tag = 300 + i, .satellites = 7, .lon_e7 = 111, .lat_e7 = 222};
    const uint64_t prefix_ts[4] = {0, 1000, 86400000, UINT64_C(315964800000)};
    for (unsigned i = 0; i < 4; i++)
        p4[i] = (struct gwproc_rspec){.ts_ms = prefix_ts[i], .tag = 400 + i, .satellites = 0};
    for (unsigned i = 0; i < 2; i++)
        p5[i] = (struct gwproc_rspec){.ts_ms = 0, .tag = 500 + i, .satellites = 0};
    p6[0] = (struct gwproc_rspec){.ts_ms = T0 - 86400000, .tag = 600, .satellites = 5};

    uint8_t b[6][PKT_BYTES];
    size_t l[6];
    l[0] = gwproc_encode_tagged(AVL_CODEC_8, p1, 3, b[0], PKT_BYTES);
    l[1] = gwproc_encode_tagged(AVL_CODEC_8E, p2, 3, b[1], PKT_BYTES);
    l[2] = gwproc_encode_tagged(AVL_CODEC_16, p3, 4, b[2], PKT_BYTES);
    l[3] = gwproc_encode_tagged(AVL_CODEC_8, p4, 4, b[3], PKT_BYTES);
    l[4] = gwproc_encode_tagged(AVL_CODEC_8E, p5, 2, b[4], PKT_BYTES);
    l[5] = gwproc_encode_tagged(AVL_CODEC_16, p6, 1, b[5], PKT_BYTES);

    struct device d;
    gwproc_dev_open(&T.gw, &d, imei);
    gwproc_send_acked(&d, b[0], l[0], 3, 0, 0);
    gwproc_send_acked(&d, b[1], l[1], 3, 0, 0);
    gwproc_send_acked(&d, b[2], l[2], 4, 0, 0);
    gwproc_send_acked(&d, b[3], l[3], 4, 0, 0);
    CHECK(rows_of(imei) == 14, "%lld rows, want 14", rows_of(imei));
    device_close(&d);

    gwproc_dev_open(&T.gw, &d, imei); /* state from the database now */
    gwproc_send_acked(&d, b[3], l[3], 4, 0, 0);
    CHECK(rows_of(imei) == 14, "the re-sent pre-fix packet was stored again: %lld rows",
          rows_of(imei));
    gwproc_send_acked(&d, b[4], l[4], 2, 0, 0); /* new records at ts 0 again */
    gwproc_send_acked(&d, b[5], l[5], 1, 0, 0); /* older than everything but the pre-fix ones */
    device_close(&d);
    CHECK(rows_of(imei) == 17, "%lld rows, want 17", rows_of(imei));

    char got[1024];
    snprintf(got, sizeof got,
             "SELECT string_agg((io->>'%u') || ':' || telemetry.timestamptz_to_ms(ts)::text"
             " || ':' || satellites::text, ',' ORDER BY (io->>'%u')::int)"
             " FROM telemetry.positions_io WHERE imei = %" PRIu64,
             TAG_IO_ID, TAG_IO_ID, imei);
    char have[1024], want[1024];
    pgtest_scalar(T.gw.db.conn, got, have, sizeof have);
    size_t o = 0;
    const struct {
        const struct gwproc_rspec *r;
        unsigned n;
    } all[6] = {{p1, 3}, {p2, 3}, {p3, 4}, {p4, 4}, {p5, 2}, {p6, 1}};
    for (unsigned k = 0; k < 6; k++)
        for (unsigned i = 0; i < all[k].n; i++)
            o += (size_t)snprintf(want + o, sizeof want - o, "%s%u:%" PRIu64 ":%u", o ? "," : "",
                                  all[k].r[i].tag, all[k].r[i].ts_ms, all[k].r[i].satellites);
    CHECK(strcmp(have, want) == 0, "stored tag:ts:sats\n  %s\nwant\n  %s", have, want);
    /* The newest record decides device_state's last position, whatever came after it. */
    CHECK(gwproc_sql_ll(&T.gw,
                        "SELECT telemetry.timestamptz_to_ms(last_ts) FROM public.device_state"
                        " WHERE imei = %" PRIu64,
                        imei) == (long long)(T0 + 40000),
          "device_state.last_ts is not the newest record");
    CHECK(gwproc_sql_ll(&T.gw,
                        "SELECT count(*) FROM public.device_state WHERE imei = %" PRIu64
                        " AND last_lon = 111 / 1e7 AND last_lat = 222 / 1e7",
                        imei) == 1,
          "device_state's last position moved back to an older record");
    struct gwproc_stats st = gwproc_term(&T.gw);
    CHECK(st.stored == 17 && st.duplicates == 4 && st.acked == 7 && st.invalid == 0,
          "counters: stored %lld duplicates %lld acked %lld invalid %lld", st.stored, st.duplicates,
          st.acked, st.invalid);
}

/* Three more IMEIs on the same shard as imei (the router is the gateway's) from start. */
static void same_shard_imeis(uint64_t imei, uint64_t start, uint64_t *out, unsigned n)
{
    unsigned shard = router_owner(&T.router, imei);
    for (uint64_t x = start; n > 0; x++)
        if (router_owner(&T.router, x) == shard)
            out[--n] = x;
}

/* A packet the database rejects (a CHECK constraint on event_id) in a batch with good packets
 * of other devices on the same shard: the good ones are stored and ACKed, the poison packet
 * never is (its connection is closed, also when re-sent), and the shard keeps serving. */
static void test_poison(void **state)
{
    (void)state;
    begin("poison");
    gwproc_start(&T.gw, (const char *const[]){"--batch-ms", "300", NULL});
    PGresult *r = PQexec(T.gw.db.conn, "ALTER TABLE telemetry.positions ADD CONSTRAINT poison"
                                       " CHECK (event_id <> 4242) NOT VALID");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) /* NOT VALID is refused on some partitioned tables: the table is empty anyway */
        pgtest_exec(T.gw.db.conn, "ALTER TABLE telemetry.positions ADD CONSTRAINT poison"
                                  " CHECK (event_id <> 4242)");
    enum { GOOD = 4 };
    uint64_t bad_imei = IMEI_BASE + 4242, good[GOOD];
    same_shard_imeis(bad_imei, IMEI_BASE + 10, good, GOOD - 1);
    for (good[GOOD - 1] = IMEI_BASE + 20;
         router_owner(&T.router, good[GOOD - 1]) == router_owner(&T.router, bad_imei);
         good[GOOD - 1]++)
        ;
    struct device g[GOOD], bad;
    for (unsigned i = 0; i < GOOD; i++)
        gwproc_dev_open(&T.gw, &g[i], good[i]);
    gwproc_dev_open(&T.gw, &bad, bad_imei);
    uint8_t pb[PKT_BYTES], pg[GOOD][2][PKT_BYTES];
    size_t lpg[GOOD][2];
    struct gwproc_rspec rs[3];
    for (unsigned i = 0; i < 3; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = gwproc_recent_ts_ms(&T.gw) + i * 1000,
                                      .tag = 42420 + i,
                                      .satellites = 6,
                                      .event_id = i == 1 ? 4242 : 0};
    size_t lpb = gwproc_encode_tagged(AVL_CODEC_8E, rs, 3, pb, sizeof pb);
    for (unsigned i = 0; i < GOOD; i++)
        for (unsigned k = 0; k < 2; k++)
            lpg[i][k] = gwproc_encode_series(AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw) + k * 10000,
                                             1000, fleet_tag(i, k, 0), 2, pg[i][k], PKT_BYTES);

    /* All within a few ms, so the poison shares its 300 ms batch with the good ones. */
    for (unsigned i = 0; i < GOOD / 2; i++)
        CHECK(device_send(&g[i], pg[i][0], lpg[i][0], 0, 0) == 0, "send");
    CHECK(device_send(&bad, pb, lpb, 0, 0) == 0, "send");
    for (unsigned i = GOOD / 2; i < GOOD; i++)
        CHECK(device_send(&g[i], pg[i][0], lpg[i][0], 0, 0) == 0, "send");
    for (unsigned i = 0; i < GOOD; i++) {
        uint32_t got = 0;
        int rc = device_wait_ack(&g[i], WAIT_MS, &got);
        CHECK(rc == 0 && got == 2, "good device %u in the poisoned batch: rc %d ACK %u", i, rc,
              got);
        CHECK(rows_of(good[i]) == 2, "good device %u: %lld rows", i, rows_of(good[i]));
    }
    gwproc_expect_closed_silently(&bad, WAIT_MS, "the poison packet's connection");
    CHECK(rows_of(bad_imei) == 0, "poison rows stored");

    /* The device re-sends it, as trackers do: refused again, never acknowledged. */
    gwproc_dev_open(&T.gw, &bad, bad_imei);
    CHECK(device_send(&bad, pb, lpb, 0, 0) == 0, "send");
    gwproc_expect_closed_silently(&bad, WAIT_MS, "the re-sent poison packet's connection");
    CHECK(rows_of(bad_imei) == 0, "poison rows stored");

    /* The poison packet again, and a replacing connection that takes the device's state
     * from the batch holding it; the database rejects the packet; the re-send on the
     * replacing connection (or, if the gateway closed it, on a new one) is not ACKed either. */
    unsigned rejected = gwproc_log_count(&T.gw, "packet rejected by the database");
    CHECK(rejected == 2, "the gateway logged %u rejections, want 2", rejected);
    /* The COPY of a poison row sleeps first, so the second connection comes while the packet
     * is seen in flight (a replacement drops bytes the first had not yet delivered). */
    pgtest_exec(T.gw.db.conn,
                "CREATE FUNCTION public.slow_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.event_id = 4242 THEN PERFORM pg_sleep(0.5); END IF;"
                " RETURN NEW; END $$;"
                "CREATE TRIGGER slow_poison BEFORE INSERT ON telemetry.positions"
                " FOR EACH ROW EXECUTE FUNCTION public.slow_poison()");
    struct device b2;
    gwproc_dev_open(&T.gw, &bad, bad_imei);
    CHECK(device_send(&bad, pb, lpb, 0, 0) == 0, "send");
    gwproc_wait_backend_sleeping(&T.gw);
    gwproc_dev_open(&T.gw, &b2, bad_imei);
    gwproc_expect_closed_silently(&bad, WAIT_MS, "the replaced poison connection");
    gwproc_wait_log(&T.gw, "packet rejected by the database", rejected + 1, WAIT_MS);
    if (!device_quiet(&b2)) {
        device_close(&b2);
        gwproc_dev_open(&T.gw, &b2, bad_imei);
    }
    CHECK(device_send(&b2, pb, lpb, 0, 0) == 0, "send");
    gwproc_expect_closed_silently(&b2, WAIT_MS,
                                  "the poison packet re-sent on a replacing connection");
    CHECK(rows_of(bad_imei) == 0, "poison rows stored");

    /* The shard still serves: the next packet of every good device. */
    for (unsigned i = 0; i < GOOD; i++) {
        gwproc_send_acked(&g[i], pg[i][1], lpg[i][1], 2, 0, 0);
        CHECK(rows_of(good[i]) == 4, "good device %u: %lld rows", i, rows_of(good[i]));
        device_close(&g[i]);
    }
    CHECK(rows_total() == GOOD * 4, "%lld rows in all", rows_total());
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* A quiet device's duplicate window is released (--state-idle-s) and loaded again before its
 * next packet, which waits meanwhile: a re-send of its last packet (its ACK lost) is still a
 * duplicate, and a new packet is stored once. */
static void test_quiet_device_reload(void **state)
{
    (void)state;
    begin("quiet_reload");
    gwproc_start(&T.gw, (const char *const[]){"--state-idle-s", "1", "--batch-ms", "5", NULL});
    enum { RECS = 5 };
    const uint64_t imei = IMEI_BASE + 7100;
    uint64_t ts0 = gwproc_recent_ts_ms(&T.gw);
    uint8_t p1[PKT_BYTES], p2[PKT_BYTES];
    size_t l1 = gwproc_encode_series(AVL_CODEC_8E, ts0, 1000, 71000, RECS, p1, sizeof p1);
    size_t l2 =
        gwproc_encode_series(AVL_CODEC_8E, ts0 + RECS * 1000, 1000, 71100, RECS, p2, sizeof p2);
    struct device d;
    gwproc_dev_open(&T.gw, &d, imei);
    gwproc_send_acked(&d, p1, l1, RECS, 0, 0);
    device_sleep_ms(2500);                     /* quiet for 1 s, looked at every 0.5 s */
    gwproc_send_acked(&d, p1, l1, RECS, 0, 0); /* the re-send: ACKed with its count, not stored */
    CHECK(rows_of(imei) == RECS, "after the re-send: %lld rows", rows_of(imei));
    device_sleep_ms(2500);
    gwproc_send_acked(&d, p2, l2, RECS, 7, 20); /* in pieces: the held bytes are kept whole */
    CHECK(rows_of(imei) == 2 * RECS, "after the new packet: %lld rows", rows_of(imei));
    device_close(&d);
    struct gwproc_stats st = gwproc_term(&T.gw);
    CHECK(st.duplicates == RECS, "%lld duplicates counted", st.duplicates);
    CHECK(gwproc_shard_sum(&T.gw, "windows_released") >= 2, "windows released %lld",
          gwproc_shard_sum(&T.gw, "windows_released"));
    CHECK(gwproc_shard_sum(&T.gw, "state_reloads") == 2, "state reloads %lld",
          gwproc_shard_sum(&T.gw, "state_reloads"));
}

/* A hostile connection: what it sends, and what the gateway must do with it. */
struct hostile {
    const char *what;
    struct device d;
    uint64_t imei; /* 0: never identified */
    bool closed;
    size_t bytes; /* received from the gateway */
    uint8_t first;
    uint64_t closed_ms;
};

static void hostile_poll(struct hostile *h)
{
    if (h->closed)
        return;
    size_t bytes = 0;
    uint8_t first = 0;
    int rc = device_wait_closed(&h->d, 0, &bytes, &first);
    if (bytes && !h->bytes)
        h->first = first;
    h->bytes += bytes;
    if (rc == 0) {
        h->closed = true;
        h->closed_ms = device_now_ms();
        device_close(&h->d);
    }
}

/* Garbage, bad CRC, absurd lengths, a non-digit IMEI, bytes before the answer, record counts
 * that disagree, a timestamp the database cannot hold, two devices sending one byte per second, and
 * hundreds of idle sockets, all while good devices send: the gateway closes every bad connection
 * without acknowledging anything, stores only the good rows, keeps the idle sockets, and serves the
 * good devices throughout. */
static void test_hostile(void **state)
{
    (void)state;
    begin("hostile");
    gwproc_start(&T.gw, (const char *const[]){"--frame-timeout-s", "2", NULL});
    struct fleet *f = fleet_make(2, 30, 2);
    for (unsigned i = 0; i < f->n; i++)
        f->t[i].gap_ms = 150;
    fleet_until(f, each_acked_at_least, 2, 10000, "good traffic");
    uint64_t hostile_from = device_now_ms();

    /* Idle sockets: two thirds bare, one third after a good handshake. */
    static struct device idle[IDLE_SOCKETS];
    for (unsigned i = 0; i < IDLE_SOCKETS; i++) {
        device_init(&idle[i], T.gw.port, IMEI_BASE + 100000 + i);
        int rc = i % 3 == 2 ? device_open(&idle[i], WAIT_MS) : device_connect(&idle[i], WAIT_MS);
        CHECK(rc == 0, "idle socket %u: %s", i, strerror(-rc));
        if (i % 10 == 0)
            trackers_poll(f->t, f->n, 0);
    }

    enum { H = 12 };
    static struct hostile h[H];
    memset(h, 0, sizeof h);
    uint8_t good_pkt[PKT_BYTES], buf[PKT_BYTES];
    size_t good_len = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 1000, 777000, 3,
                                           good_pkt, sizeof good_pkt);
    for (unsigned i = 0; i < H; i++) {
        device_init(&h[i].d, T.gw.port, IMEI_BASE + 200000 + i);
        h[i].imei = h[i].d.imei;
    }
    unsigned k = 0;
    /* 0: an HTTP request instead of a handshake */
    h[k].what = "http request";
    h[k].imei = 0;
    CHECK(device_connect(&h[k].d, WAIT_MS) == 0, "connect");
    static const char http[] = "GET / HTTP/1.1\r\nHost: gateway\r\n\r\n";
    device_send(&h[k].d, (const uint8_t *)http, sizeof http - 1, 0, 0);
    k++;
    /* 1: random binary before any handshake */
    h[k].what = "random bytes";
    h[k].imei = 0;
    CHECK(device_connect(&h[k].d, WAIT_MS) == 0, "connect");
    uint64_t seed = 12345;
    for (unsigned i = 0; i < 256; i++)
        buf[i] = (uint8_t)(tu_rand_u64(&seed) | 0x01);
    device_send(&h[k].d, buf, 256, 0, 0);
    k++;
    /* 2: a non-digit IMEI */
    h[k].what = "non-digit imei";
    h[k].imei = 0;
    CHECK(device_connect(&h[k].d, WAIT_MS) == 0, "connect");
    static const uint8_t bad_imei[] = "\x00\x0f"
                                      "35630704244A013";
    device_send(&h[k].d, bad_imei, sizeof bad_imei - 1, 0, 0);
    k++;
    /* 3: a handshake that claims 65535 digits */
    h[k].what = "imei length 65535";
    h[k].imei = 0;
    CHECK(device_connect(&h[k].d, WAIT_MS) == 0, "connect");
    static const uint8_t long_imei[] = "\xff\xff"
                                       "356307042441013";
    device_send(&h[k].d, long_imei, sizeof long_imei - 1, 0, 0);
    k++;
    /* 4: garbage after a good handshake */
    h[k].what = "garbage after handshake";
    CHECK(device_open(&h[k].d, WAIT_MS) == 0, "open");
    device_send(&h[k].d, (const uint8_t *)http, sizeof http - 1, 0, 0);
    k++;
    /* 5: a good packet with its CRC broken */
    h[k].what = "bad crc";
    CHECK(device_open(&h[k].d, WAIT_MS) == 0, "open");
    memcpy(buf, good_pkt, good_len);
    buf[good_len - 1] ^= 0x5a;
    device_send(&h[k].d, buf, good_len, 0, 0);
    k++;
    /* 6: data length 0xFFFFFFF0: refused on sight, not after waiting for the bytes */
    h[k].what = "data length 0xfffffff0";
    CHECK(device_open(&h[k].d, WAIT_MS) == 0, "open");
    static const uint8_t huge[] = {0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf0, 0x08, 0x01};
    device_send(&h[k].d, huge, sizeof huge, 0, 0);
    k++;
    /* 7: record counts that disagree, with a correct CRC (a speed smallint cannot hold was
     * refused here once; it is stored with speed NULL now: test_stall) */
    h[k].what = "record counts differ";
    CHECK(device_open(&h[k].d, WAIT_MS) == 0, "open");
    {
        memcpy(buf, good_pkt, good_len);
        buf[good_len - 5]++; /* the record count after the records */
        uint32_t len7 = (uint32_t)good_len - AVL_TCP_OVERHEAD_BYTES;
        uint16_t crc7 = avl_crc16(0, buf + AVL_TCP_HEADER_BYTES, len7);
        buf[good_len - 2] = (uint8_t)(crc7 >> 8);
        buf[good_len - 1] = (uint8_t)crc7;
        device_send(&h[k].d, buf, good_len, 0, 0);
    }
    k++;
    /* 8: a timestamp past what timestamptz holds, with a correct CRC */
    h[k].what = "timestamp out of range";
    CHECK(device_open(&h[k].d, WAIT_MS) == 0, "open");
    memcpy(buf, good_pkt, good_len);
    memset(buf + 10, 0xff, 8); /* the first record's timestamp */
    uint32_t data_len = (uint32_t)good_len - AVL_TCP_OVERHEAD_BYTES;
    uint16_t crc = avl_crc16(0, buf + AVL_TCP_HEADER_BYTES, data_len);
    buf[good_len - 2] = (uint8_t)(crc >> 8);
    buf[good_len - 1] = (uint8_t)crc;
    device_send(&h[k].d, buf, good_len, 0, 0);
    k++;
    /* 9: a packet right behind the handshake, without waiting for the answer */
    h[k].what = "packet before the answer";
    CHECK(device_connect(&h[k].d, WAIT_MS) == 0, "connect");
    int hl = avl_encode_imei(buf, sizeof buf, h[k].imei);
    memcpy(buf + hl, good_pkt, good_len);
    device_send(&h[k].d, buf, (size_t)hl + good_len, 0, 0);
    k++;
    /* 10, 11: one byte per second, of a handshake and of a packet after a good handshake */
    unsigned slow_hs = k++, slow_pkt = k++;
    h[slow_hs].what = "slow handshake";
    CHECK(device_connect(&h[slow_hs].d, WAIT_MS) == 0, "connect");
    uint8_t slow_hs_bytes[AVL_HANDSHAKE_BYTES_MAX];
    avl_encode_imei(slow_hs_bytes, sizeof slow_hs_bytes, h[slow_hs].imei);
    h[slow_pkt].what = "slow packet";
    CHECK(device_open(&h[slow_pkt].d, WAIT_MS) == 0, "open");
    assert_int_equal(k, H);

    /* The loop: good devices, the slow senders' next byte, every hostile connection watched. */
    unsigned slow_sent = 0;
    uint64_t slow_from = device_now_ms(), next_byte = slow_from;
    uint64_t deadline = slow_from + 15000;
    for (;;) {
        uint64_t now = device_now_ms();
        if (now >= next_byte && slow_sent < 8) {
            if (!h[slow_hs].closed)
                device_send(&h[slow_hs].d, slow_hs_bytes + slow_sent, 1, 0, 0);
            if (!h[slow_pkt].closed)
                device_send(&h[slow_pkt].d, good_pkt + slow_sent, 1, 0, 0);
            slow_sent++;
            next_byte += 1000;
        }
        unsigned open = 0;
        for (unsigned i = 0; i < H; i++) {
            hostile_poll(&h[i]);
            open += !h[i].closed;
        }
        bool good_done = all_done(f, 0);
        /* The owner keeps a packet-before-the-answer connection open (see below). */
        if ((open == 0 || (open == 1 && !h[9].closed)) && good_done)
            break;
        if (now >= deadline)
            break;
        trackers_poll(f->t, f->n, 20);
    }
    uint64_t hostile_to = device_now_ms();

    for (unsigned i = 0; i < H; i++) {
        if (i == 9)
            continue;
        CHECK(h[i].closed, "%s: the gateway kept the connection open", h[i].what);
        CHECK(h[i].bytes == 0 || (i <= 3 && h[i].bytes == 1 && h[i].first == 0x00),
              "%s: the gateway sent %zu bytes (first 0x%02x) before closing", h[i].what, h[i].bytes,
              h[i].first);
    }
    /* Refused on sight: well before the 2 s frame timeout. */
    for (unsigned i = 0; i < 9; i++)
        CHECK(h[i].closed_ms - slow_from < 1500, "%s: closed only after %llu ms", h[i].what,
              (unsigned long long)(h[i].closed_ms - slow_from));
    /* One byte per second: cut by the frame timeout after 2 s (1 s timer granularity). */
    for (unsigned i = slow_hs; i <= slow_pkt; i++) {
        uint64_t after = h[i].closed_ms - slow_from;
        CHECK(after >= 900 && after <= 4500, "%s: closed after %llu ms, want about 2 s", h[i].what,
              (unsigned long long)after);
    }
    /* A device that does not wait for the answer gets at most the answer, never an ACK. */
    hostile_poll(&h[9]);
    CHECK(h[9].bytes <= 1, "packet before the answer: %zu bytes came back", h[9].bytes);
    device_close(&h[9].d);

    /* The good devices completed while all this went on. */
    CHECK(all_done(f, 0), "the good devices did not complete: acked %u of %u", fleet_acked(f),
          f->n * f->per);
    unsigned acked_during = 0;
    for (unsigned d = 0; d < f->n; d++)
        for (unsigned p = 0; p < f->per; p++)
            acked_during +=
                f->pkts[d][p].acked_ms >= hostile_from && f->pkts[d][p].acked_ms <= hostile_to;
    CHECK(acked_during >= 10, "only %u good packets acknowledged during the attack", acked_during);
    fleet_check(f, true);
    for (unsigned i = 0; i < H; i++)
        CHECK(h[i].imei == 0 || rows_of(h[i].imei) == 0, "%s: rows stored", h[i].what);
    CHECK(rows_total() == (long long)f->n * f->per * f->records, "%lld rows in all, want %u",
          rows_total(), f->n * f->per * f->records);

    /* The idle sockets are still connected and were sent nothing. */
    unsigned quiet = 0;
    for (unsigned i = 0; i < IDLE_SOCKETS; i++) {
        quiet += device_quiet(&idle[i]);
        device_close(&idle[i]);
    }
    CHECK(quiet == IDLE_SOCKETS, "only %u of %u idle sockets still quietly open", quiet,
          IDLE_SOCKETS);
    /* And a new device is served at once. */
    struct device d;
    gwproc_dev_open(&T.gw, &d, IMEI_BASE + 31337);
    gwproc_send_acked(&d, good_pkt, good_len, 3, 0, 0);
    device_close(&d);
    CHECK(gwproc_running(&T.gw), "the gateway died");
    /* Nine refusals counted (0..8; the slow ones are timeouts, the early packet is a
     * handshake error or dropped with it); only good records stored. */
    struct gwproc_stats st = gwproc_term(&T.gw);
    CHECK(st.invalid == 9 && st.duplicates == 0 &&
              st.stored == (long long)f->n * f->per * f->records + 3,
          "counters: invalid %lld duplicates %lld stored %lld", st.invalid, st.duplicates,
          st.stored);
}

/* SIGTERM while devices send (their packets wait in 200 ms batches): the gateway drains and
 * exits 0; every acknowledged packet is stored, none in part or twice, and the packets caught
 * in the batches at SIGTERM are committed and acknowledged. */
static void test_sigterm_drain(void **state)
{
    (void)state;
    begin("sigterm");
    gwproc_start(&T.gw, (const char *const[]){"--batch-ms", "200", NULL});
    struct fleet *f = fleet_make(6, 30, 2);
    fleet_until(f, total_acked_at_least, 12, 20000, "traffic before SIGTERM");
    /* Each device has its next packet on the wire, none acknowledged yet. */
    uint64_t in_flight_deadline = device_now_ms() + 2000;
    bool all_sending = false;
    while (!all_sending && device_now_ms() < in_flight_deadline) {
        trackers_poll(f->t, f->n, 5);
        all_sending = true;
        for (unsigned d = 0; d < f->n; d++)
            all_sending &=
                f->t[d].phase == TRK_SENDING && f->t[d].out_off == f->pkts[d][f->t[d].acked].len;
    }
    unsigned acked_before[FLEET_MAX];
    for (unsigned d = 0; d < f->n; d++)
        acked_before[d] = f->t[d].acked;
    uint64_t term_at = device_now_ms();
    kill(T.gw.pid, SIGTERM);
    int status = -1;
    uint64_t deadline = term_at + 15000;
    while (device_now_ms() < deadline) {
        trackers_poll(f->t, f->n, 10);
        int st;
        if (waitpid(T.gw.pid, &st, WNOHANG) == T.gw.pid) {
            T.gw.pid = 0;
            status = st;
            break;
        }
    }
    uint64_t exited_at = device_now_ms();
    CHECK(status != -1, "the gateway did not exit within 15 s of SIGTERM");
    /* Read what the gateway sent before it closed: until each device saw the close. */
    for (unsigned i = 0; i < 20; i++)
        trackers_poll(f->t, f->n, 10);
    for (unsigned d = 0; d < f->n; d++)
        tracker_stop(&f->t[d]);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "after SIGTERM the gateway ended with status 0x%x", status);
    fleet_check(f, false);
    unsigned drained = 0;
    for (unsigned d = 0; d < f->n; d++)
        drained += f->t[d].acked > acked_before[d];
    CHECK(!all_sending || drained == f->n,
          "%u of %u devices had a packet in a batch at SIGTERM, only %u got its ACK", f->n, f->n,
          drained);
    printf("sigterm: exit after %llu ms; %u of %u in-flight packets acknowledged by the drain\n",
           (unsigned long long)(exited_at - term_at), drained, f->n);
}

/* device_state_claim made slow: the real one (renamed) answers first, taking its snapshots
 * then, and the answer is returned 1 s later, so it predates whatever committed meanwhile.
 * Each answer is logged in public.slow_loads. */
static const char SLOW_CLAIM_SQL[] =
    "CREATE TABLE public.slow_loads (l_imei bigint, l_ts_ms bigint, l_owner bigint,"
    " l_claimed boolean);"
    "ALTER FUNCTION telemetry.device_state_claim(bigint, bigint, boolean)"
    " RENAME TO device_state_claim_now;"
    "CREATE FUNCTION telemetry.device_state_claim(p_imei bigint, p_owner bigint,"
    " p_known_only boolean)"
    " RETURNS TABLE (last_ts_ms bigint, dedup bytea, enabled boolean, owner bigint,"
    " claimed boolean) LANGUAGE plpgsql AS $fn$ DECLARE r record; BEGIN"
    " SELECT * INTO STRICT r FROM telemetry.device_state_claim_now(p_imei, p_owner, p_known_only);"
    " INSERT INTO public.slow_loads VALUES (p_imei, r.last_ts_ms, r.owner, r.claimed);"
    " PERFORM pg_sleep(1);"
    " RETURN QUERY SELECT r.last_ts_ms, r.dedup, r.enabled, r.owner, r.claimed; END $fn$";

/* A re-send on a replacing connection whose state load read the database before the
 * original packet committed: device_state_claim is made slow (its snapshot is taken, then it
 * sleeps 1 s) and the original's COMMIT sleeps 0.3 s in a trigger, so the load starts while
 * the batch is in flight and answers after it committed and was released. The replacing
 * connection holds the device's token (that batch's), so its load claims nothing and reads
 * without waiting for the batch's row lock. The load must not miss those records: the re-send
 * is ACKed and not stored again. */
static void test_resend_during_slow_load(void **state)
{
    (void)state;
    begin("slow_load");
    gwproc_start(&T.gw, NULL);
    gwproc_slow_commit_trigger(&T.gw, "0.3");
    pgtest_exec(T.gw.db.conn, SLOW_CLAIM_SQL);
    uint64_t imei = IMEI_BASE + 55;
    struct gwproc_rspec rs[4];
    for (unsigned i = 0; i < 4; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = gwproc_recent_ts_ms(&T.gw) + i * 1000,
                                      .tag = 550000 + i,
                                      .satellites = 7,
                                      .event_id = i == 0 ? GWPROC_SLOW_EVENT_ID : 0};
    uint8_t p[PKT_BYTES], q[PKT_BYTES];
    size_t lp = gwproc_encode_tagged(AVL_CODEC_8E, rs, 4, p, sizeof p);
    size_t lq = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw) + 4000, 1000, 550100,
                                     2, q, sizeof q);
    struct device a, b;
    gwproc_dev_open(&T.gw, &a, imei);
    long long token =
        gwproc_sql_ll(&T.gw, "SELECT owner FROM public.device_state WHERE imei = %" PRIu64, imei);
    CHECK(device_send(&a, p, lp, 0, 0) == 0, "send failed");
    gwproc_wait_backend_sleeping(&T.gw);
    uint64_t t0 = device_now_ms();
    gwproc_dev_open(&T.gw, &b,
                    imei); /* replaces a; its load reads a snapshot older than the commit */
    CHECK(device_now_ms() - t0 >= 900, "the state load did not take its 1 s");
    gwproc_expect_closed_silently(&a, WAIT_MS, "the replaced connection");
    CHECK(rows_of(imei) == 4, "the original packet is not committed: %lld rows", rows_of(imei));
    gwproc_send_acked(&b, p, lp, 4, 0, 0);
    CHECK(rows_of(imei) == 4, "the re-send was stored again: %lld rows, want 4", rows_of(imei));
    gwproc_send_acked(&b, q, lq, 2, 0, 0);
    CHECK(rows_of(imei) == 6, "%lld rows, want 6", rows_of(imei));
    device_close(&b);
    /* the case happened: one load (a's) took the device, and one answer came without the
     * original packet's records (b's, read before the COMMIT); the token never changed */
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM public.slow_loads WHERE l_claimed") == 1,
          "the device was taken over more than once");
    CHECK(gwproc_sql_ll(&T.gw,
                        "SELECT count(*) FROM public.slow_loads WHERE NOT l_claimed AND "
                        "l_ts_ms IS NULL AND l_owner = %lld",
                        token) == 1,
          "no load answer of the replacing connection predated the COMMIT");
    CHECK(gwproc_sql_ll(&T.gw, "SELECT owner FROM public.device_state WHERE imei = %" PRIu64,
                        imei) == token,
          "the device's token changed");
}

/* The COMMIT outcome of a batch becomes unknown (its backend is terminated while a deferred
 * trigger sleeps in COMMIT, so it did not commit) while a replacing connection holds the
 * device's state taken from that batch: the re-send must be stored, never ACKed without rows.
 * The gateway may close the replacing connection (the device reconnects) or take the re-send;
 * either way the ACK of the re-send means its rows are there. */
static void test_unknown_outcome_replacing(void **state)
{
    (void)state;
    begin("unknown");
    gwproc_start(&T.gw, NULL);
    gwproc_slow_commit_trigger(&T.gw, "30");
    uint64_t imei = IMEI_BASE + 66;
    struct gwproc_rspec rs[3];
    for (unsigned i = 0; i < 3; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = gwproc_recent_ts_ms(&T.gw) + i * 1000,
                                      .tag = 660 + i,
                                      .satellites = 5,
                                      .event_id = i == 0 ? GWPROC_SLOW_EVENT_ID : 0};
    uint8_t p[PKT_BYTES];
    size_t lp = gwproc_encode_tagged(AVL_CODEC_8E, rs, 3, p, sizeof p);
    struct device a, b;
    gwproc_dev_open(&T.gw, &a, imei);
    CHECK(device_send(&a, p, lp, 0, 0) == 0, "send failed");
    long long pid = gwproc_wait_backend_sleeping(&T.gw);
    gwproc_dev_open(&T.gw, &b, imei); /* replaces a while the batch's COMMIT sleeps */
    gwproc_expect_closed_silently(&a, WAIT_MS, "the replaced connection");
    /* End the backend inside COMMIT: the gateway cannot know whether it committed. */
    CHECK(gwproc_sql_ll(&T.gw, "SELECT pg_terminate_backend(%lld)::int", pid) == 1,
          "terminate failed");
    gwproc_wait_log(&T.gw, "commit outcome unknown", 1, WAIT_MS);
    pgtest_exec(T.gw.db.conn, "DROP TRIGGER slow_commit ON telemetry.positions");
    CHECK(rows_of(imei) == 0, "the terminated COMMIT stored %lld rows", rows_of(imei));

    /* The device re-sends on its connection, or on a new one if the gateway closed it. */
    if (!device_quiet(&b)) {
        device_close(&b);
        gwproc_dev_open(&T.gw, &b, imei);
    }
    gwproc_send_acked(&b, p, lp, 3, 0, 0);
    CHECK(rows_of(imei) == 3, "the re-send was ACKed but %lld of its 3 rows are stored",
          rows_of(imei));
    device_close(&b);
    expect_rows_of_frame(imei, p, lp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_codecs, teardown),
        cmocka_unit_test_teardown(test_fragmented_coalesced, teardown),
        cmocka_unit_test_teardown(test_ack_after_commit, teardown),
        cmocka_unit_test_teardown(test_devices_known, teardown),
        cmocka_unit_test_teardown(test_sighup_allowlist, teardown),
        cmocka_unit_test_teardown(test_poison_resend_same_batch, teardown),
        cmocka_unit_test_teardown(test_ordering, teardown),
        cmocka_unit_test_teardown(test_resend_replacing, teardown),
        cmocka_unit_test_teardown(test_poison, teardown),
        cmocka_unit_test_teardown(test_hostile, teardown),
        cmocka_unit_test_teardown(test_gateway_sigkill, teardown),
        cmocka_unit_test_teardown(test_sigterm_drain, teardown),
        cmocka_unit_test_teardown(test_pg_outage, teardown),
        cmocka_unit_test_teardown(test_resend_during_slow_load, teardown),
        cmocka_unit_test_teardown(test_unknown_outcome_replacing, teardown),
        cmocka_unit_test_teardown(test_quiet_device_reload, teardown),
    };
    /* By hand: TEST_INGEST_FILTER=test_poison (a cmocka pattern) runs matching cases only. */
    const char *filter = getenv("TEST_INGEST_FILTER");
    if (filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
