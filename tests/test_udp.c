/* test_udp.c — Teltonika over UDP against the whole gateway: the real `avlgate run`
 * (tests/support/gwproc.h) and the fixture's PostgreSQL, devices played over loopback UDP
 * (tests/support/udpdev.h) and, beside them, over TCP (tests/support/device.h).
 *
 * One datagram is one AVL packet; the gateway ACKs it (7 bytes, to the datagram's source
 * address) only after its rows are committed. Every ACK is compared byte for byte with one made
 * here from the datagram's header (00 05 <packet id> 01 <AVL packet id> <records>), not with
 * the codec's encoder. Rows are recognisable: tagged records carry IO element 200 = a tag that
 * names the device, packet and record, so a duplicate shows as a repeated tag.
 *
 * Cases:
 *   codecs        Codec 8, 8E and 16: hand-made records at the edges of every column, then a
 *                 realistic packet (loadgen/packetgen.h); every column of every row as sent,
 *                 the rows there when the ACK comes, the ACK exact; the /metrics UDP counters
 *                 and the final counters add up.
 *   twice         the same datagram twice back-to-back, to a device not yet open (both wait
 *                 for its state) and to an open one (both in one batch): both ACKed, exact,
 *                 the records stored once, one duplicate counted per pair.
 *   ack_lost      sent, ACKed, the rows visible; the same bytes again: ACKed again, nothing
 *                 stored twice; again after the UDP device was closed for idleness (its window
 *                 loaded from the database): still a duplicate.
 *   nat_rebind    one IMEI from four sockets in turn (a new source port each time): each ACK
 *                 goes to the socket that sent the datagram, the earlier ones get nothing; the
 *                 previous socket's datagram re-sent from the new one is a duplicate; one
 *                 datagram from two sockets at once: each copy ACKed to its own socket.
 *   sigkill       UDP trackers (one datagram in flight, re-sent until ACKed) while the gateway
 *                 is SIGKILLed three times and restarted: every ACKed packet stored, none twice
 *                 or in part, all stored at the end.
 *   hostile       random bytes, cut short, one byte too many, a lying length field, a non-digit
 *                 IMEI, count 2 != count 1, an unknown codec, a GPRS codec, IMEI length 0, an
 *                 IMEI no handoff key holds, empty, a lone 0xFF, 65,000 zero bytes, a valid
 *                 datagram one byte over --udp-bytes-max: none answered, each counted under its
 *                 reason (the codec's own verdict, checked against the expected name), nothing
 *                 stored; then a datagram of exactly --udp-bytes-max is served.
 *   side_by_side  one IMEI over TCP and UDP at once, then UDP only, then TCP again: one window
 *                 (a packet sent on one and re-sent on the other is a duplicate), UDP ACKs to
 *                 the datagram's address, no UDP device while a connection has the IMEI; then
 *                 TCP trackers and UDP trackers together: everything stored exactly once.
 *   dormant       a TCP device whose window was released while quiet (--state-idle-s): a
 *                 datagram of its IMEI reloads it and is taken under the connection; still one
 *                 window both ways.
 *   poison        a datagram the database refuses, twice at once in a batch with a good one:
 *                 the good one ACKed, the poison never (nor its re-send later: its records are
 *                 no duplicates), the device's next datagram served.
 *   devices_known --devices known: an enabled IMEI is served; an unknown and a disabled one
 *                 get no reply (also two copies at once), each datagram counted once, as
 *                 unknown_device and under no other drop reason, nothing stored.
 *   commands_wait_for_tcp  an open command for a device known over UDP only waits (no Codec
 *                 12 over UDP) while the sweep runs and datagrams go on; written once the IMEI
 *                 connects over TCP.
 *   devices_full  --udp-devices-max 1: a second IMEI on the same shard dropped (devices_full,
 *                 no reply) until the first is closed as idle, then served.
 *   udp_off       --udp off: no reply to a valid datagram (TCP still served).
 *   udp_moved     --udp HOST:PORT: served there and not on the --listen port.
 *   burst         2,500 new devices at once, each re-sending until ACKed (more first datagrams
 *                 waiting for state loads than half the held copies: the socket pauses; any
 *                 drop is re-sent): all stored once, every ACK right; the figures printed.
 *
 * Every wait is bounded; a wait for a reply that must not come lasts QUIET_MS. No timing goal is
 * asserted. The gateway's output goes to test_udp_<case>.log in the build directory; a failing
 * check prints its tail. */
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
#include "gateway/router.h"
#include "loadgen/packetgen.h"
#include "tests/support/device.h"
#include "tests/support/gwproc.h"
#include "tests/support/pgtest.h"
#include "tests/support/promtext.h"
#include "tests/support/scrape.h"
#include "tests/support/testutil.h"
#include "tests/support/udpdev.h"

enum {
    WAIT_MS = GWPROC_WAIT_MS,
    TAG_IO_ID = GWPROC_TAG_IO_ID,
    QUIET_MS = 1500, /* how long a reply that must not come is waited for */
    DGRAM_BYTES = 4096,
    UDP_BYTES_MAX = 4096, /* the gateway's default --udp-bytes-max */
    SOCKS_MAX = 32,
    FLEET_MAX = 8,
    FLEET_PKTS_MAX = 40,
    FLEET_BYTES = 512,
};

#define IMEI_BASE UINT64_C(356307042442013)

/* ---- the case: what the teardown must undo ------------------------------------------------ */

struct fleet;

static struct {
    struct gwproc gw;
    uint16_t metrics_port;
    struct udpdev socks[SOCKS_MAX];
    unsigned socks_len;
    struct fleet *fleet;
} T;

static void begin(const char *name)
{
    memset(&T, 0, sizeof T);
    gwproc_begin(&T.gw, "test_udp", name, "test_udp");
    T.metrics_port = device_free_port();
}

/* Starts the gateway with --metrics and extra (NULL-terminated, may be NULL). */
static void start(const char *const *extra)
{
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

static void fleet_free(struct fleet *f);
static void burst_free(void);

static int teardown(void **state)
{
    (void)state;
    burst_free();
    for (unsigned i = 0; i < T.socks_len; i++)
        udpdev_close(&T.socks[i]);
    T.socks_len = 0;
    fleet_free(T.fleet);
    T.fleet = NULL;
    gwproc_end(&T.gw);
    return 0;
}

/* A new socket (a new source port) that sends to port; closed by the teardown. */
static struct udpdev *sock_to(uint16_t port)
{
    CHECK(T.socks_len < SOCKS_MAX, "too many sockets");
    struct udpdev *u = &T.socks[T.socks_len++];
    int rc = udpdev_open(u, port);
    CHECK(rc == 0, "UDP socket: %s", strerror(-rc));
    return u;
}

static struct udpdev *sock(void)
{
    return sock_to(T.gw.port);
}

/* ---- /metrics ----------------------------------------------------------------------------- */

/* GET /metrics, parsed strictly (tests/support/promtext.h). */
static void scrape(struct prom_text *t)
{
    char err[512];
    CHECK(metrics_scrape(T.metrics_port, t, err, sizeof err) == 0, "%s", err);
}

/* The sum over the shards of metric name (with one more label pair, or NULL). The family must
 * be there (a labelled family may have no samples yet: 0). */
static double metric(const char *name, const char *label, const char *value)
{
    struct prom_text t;
    scrape(&t);
    CHECK(prom_family(&t, name) != NULL, "/metrics has no %s", name);
    double v = label ? prom_sum(&t, name, label, value, NULL) : prom_sum(&t, name, NULL);
    prom_free(&t);
    return v;
}

#define UDP_M(suffix) "avlgate_udp_datagrams_" suffix

/* The gateway's view of the datagrams so far, on stderr (a failure's context). */
static void udp_counters_say(void)
{
    static const char *const names[] = {UDP_M("received_total"),
                                        UDP_M("handed_off_total"),
                                        UDP_M("taken_total"),
                                        UDP_M("acked_total"),
                                        UDP_M("duplicate_total"),
                                        UDP_M("invalid_total"),
                                        UDP_M("dropped_total"),
                                        "avlgate_udp_acks_failed_total",
                                        "avlgate_udp_acks_no_slot_total",
                                        "avlgate_udp_devices",
                                        "avlgate_state_loads_failed_total",
                                        "avlgate_rows_committed_total"};
    struct prom_text t;
    char err[512];
    if (metrics_scrape(T.metrics_port, &t, err, sizeof err) != 0) {
        fprintf(stderr, "udp counters: /metrics: %s\n", err);
        return;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (prom_family(&t, names[i]) != NULL)
            fprintf(stderr, "udp counters: %s %g\n", names[i], prom_sum(&t, names[i], NULL));
    prom_free(&t);
}

/* Waits until metric (as metric()) reaches at least want; returns the last value read. */
static double metric_at_least(const char *name, const char *label, const char *value, double want,
                              int timeout_ms)
{
    uint64_t deadline = device_now_ms() + (uint64_t)timeout_ms;
    double v = metric(name, label, value);
    while (v < want && device_now_ms() < deadline) {
        device_sleep_ms(20); /* bounded polling of /metrics */
        v = metric(name, label, value);
    }
    return v;
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

/* Rows whose tag is stored more than once. */
static long long tags_repeated(void)
{
    return gwproc_sql_ll(&T.gw,
                         "SELECT count(*) FROM (SELECT io->>'%d' FROM telemetry.positions_io "
                         "GROUP BY 1 HAVING count(*) > 1) r",
                         TAG_IO_ID);
}

/* ---- rows compared with decoded records --------------------------------------------------- */

/* Decodes our own datagram and checks every record against the database. Returns N. */
static unsigned expect_rows_of_dgram(const uint8_t *dg, size_t len)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    int rc = avl_decode_udp(dg, len, &pkt, recs);
    CHECK(rc == 0, "our datagram does not decode: %s", avl_strerror(rc));
    for (unsigned i = 0; i < pkt.records_len; i++)
        gwproc_expect_row(&T.gw, pkt.imei, &recs[i]);
    return pkt.records_len;
}

/* ---- datagrams and ACKs ------------------------------------------------------------------- */

/* A datagram of n tagged records (tags tag0..; gwproc_encode_series) for imei. */
static size_t dgram_series(uint64_t imei, uint16_t packet_id, uint8_t avl_packet_id, uint8_t codec,
                           uint64_t ts0_ms, uint32_t tag0, unsigned n, uint8_t *out, size_t cap)
{
    uint8_t frame[DGRAM_BYTES];
    size_t fl = gwproc_encode_series(codec, ts0_ms, 1000, tag0, n, frame, sizeof frame);
    int len = udpdev_from_tcp(frame, fl, imei, packet_id, avl_packet_id, out, cap);
    CHECK(len > 0, "udpdev_from_tcp: %d", len);
    return (size_t)len;
}

/* The ACK a datagram must get, made from its header bytes. */
static void ack_of(const uint8_t *dg, uint8_t records, uint8_t out[AVL_UDP_ACK_BYTES])
{
    const uint8_t a[AVL_UDP_ACK_BYTES] = {0x00, 0x05, dg[2], dg[3], 0x01, dg[5], records};
    memcpy(out, a, sizeof a);
}

static const char *hex(const uint8_t *p, int n, char out[2 * 64 + 1])
{
    if (n < 0)
        return strerror(-n);
    tu_hex_encode(p, (size_t)(n < 64 ? n : 64), out);
    return out;
}

/* The next datagram from the gateway to u is exactly dg's ACK with `records`. */
static void expect_ack(struct udpdev *u, const uint8_t *dg, uint8_t records, const char *what)
{
    uint8_t want[AVL_UDP_ACK_BYTES], got[64];
    ack_of(dg, records, want);
    int n = udpdev_recv(u, got, sizeof got, WAIT_MS);
    char hg[2 * 64 + 1], hw[2 * 64 + 1];
    if (n != AVL_UDP_ACK_BYTES)
        udp_counters_say(); /* where the datagram went, for the failure below */
    CHECK(n == AVL_UDP_ACK_BYTES && memcmp(got, want, sizeof want) == 0,
          "%s: got %s, want the ACK %s", what, hex(got, n, hg), hex(want, sizeof want, hw));
}

/* Sends dg from u and expects its exact ACK. */
static void send_acked(struct udpdev *u, const uint8_t *dg, size_t len, uint8_t records,
                       const char *what)
{
    CHECK(udpdev_send(u, dg, len) == 0, "%s: send: %s", what, strerror(errno));
    expect_ack(u, dg, records, what);
}

/* Nothing comes to u for ms. */
static void expect_silence(struct udpdev *u, int ms, const char *what)
{
    uint8_t got[64];
    int n = udpdev_recv(u, got, sizeof got, ms);
    char h[2 * 64 + 1];
    CHECK(n == -ETIMEDOUT, "%s: the gateway answered %s", what, hex(got, n, h));
    CHECK(u->stray == 0, "%s: %u datagrams from another address", what, u->stray);
}

/* Sends dg from u, and waits QUIET_MS for a reply that must not come. */
static void send_unanswered(struct udpdev *u, const uint8_t *dg, size_t len, const char *what)
{
    CHECK(udpdev_send(u, dg, len) == 0, "%s: send: %s", what, strerror(errno));
    expect_silence(u, QUIET_MS, what);
}

/* ---- fleets: TCP trackers and UDP trackers ------------------------------------------------ */

/* Devices 0 .. tcp_n - 1 are TCP trackers, tcp_n .. tcp_n + udp_n - 1 UDP trackers. */
struct fleet {
    unsigned tcp_n, udp_n, per, records;
    uint64_t imei[2 * FLEET_MAX];
    struct tracker tt[FLEET_MAX];
    struct tracker_pkt tp[FLEET_MAX][FLEET_PKTS_MAX];
    struct udptrk ut[FLEET_MAX];
    struct udptrk_pkt up[FLEET_MAX][FLEET_PKTS_MAX];
    uint8_t bytes[2 * FLEET_MAX][FLEET_PKTS_MAX][FLEET_BYTES];
};

static void fleet_free(struct fleet *f)
{
    if (!f)
        return;
    for (unsigned i = 0; i < f->tcp_n; i++)
        tracker_stop(&f->tt[i]);
    for (unsigned i = 0; i < f->udp_n; i++)
        udptrk_stop(&f->ut[i]);
    free(f);
}

/* The tag of record r of packet p of device d. */
static uint32_t fleet_tag(unsigned d, unsigned p, unsigned r)
{
    return (d + 1) * 1000000u + p * 1000u + r;
}

/* Packet p of device d: a TCP frame, or (udp) the datagram with packet id 0xA000 + p and AVL
 * packet id p + 1 made from it. Codecs 8, 8E, 16 in turn. Returns its length. */
static size_t fleet_packet(struct fleet *f, unsigned d, unsigned p, uint64_t ts0, bool udp)
{
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    uint64_t ts = ts0 + (uint64_t)(p * f->records) * 1000;
    uint8_t frame[FLEET_BYTES];
    size_t fl = gwproc_encode_series(codecs[(p + d) % 3], ts, 1000, fleet_tag(d, p, 0), f->records,
                                     udp ? frame : f->bytes[d][p], FLEET_BYTES);
    if (!udp)
        return fl;
    int len = udpdev_from_tcp(frame, fl, f->imei[d], (uint16_t)(0xA000 + p), (uint8_t)(p + 1),
                              f->bytes[d][p], FLEET_BYTES);
    CHECK(len > 0, "udpdev_from_tcp: %d", len);
    return (size_t)len;
}

/* tcp_n TCP and udp_n UDP trackers of per packets of `records` tagged records each. */
static struct fleet *fleet_make(unsigned tcp_n, unsigned udp_n, unsigned per, unsigned records)
{
    assert_true(tcp_n <= FLEET_MAX && udp_n <= FLEET_MAX && per <= FLEET_PKTS_MAX);
    assert_true(records > 0 && records < 1000);
    struct fleet *f = calloc(1, sizeof *f);
    assert_non_null(f);
    *f = (struct fleet){.tcp_n = tcp_n, .udp_n = udp_n, .per = per, .records = records};
    T.fleet = f;
    uint64_t ts0 = gwproc_recent_ts_ms(&T.gw);
    for (unsigned d = 0; d < tcp_n + udp_n; d++) {
        bool udp = d >= tcp_n;
        f->imei[d] = IMEI_BASE + 1000 * (d + 1);
        for (unsigned p = 0; p < per; p++) {
            size_t len = fleet_packet(f, d, p, ts0, udp);
            if (udp)
                f->up[d - tcp_n][p] = (struct udptrk_pkt){.bytes = f->bytes[d][p],
                                                          .len = len,
                                                          .packet_id = (uint16_t)(0xA000 + p),
                                                          .avl_packet_id = (uint8_t)(p + 1),
                                                          .records = (uint8_t)records};
            else
                f->tp[d][p] =
                    (struct tracker_pkt){.bytes = f->bytes[d][p], .len = len, .records = records};
        }
        if (udp)
            CHECK(udptrk_init(&f->ut[d - tcp_n], T.gw.port, f->up[d - tcp_n], per) == 0,
                  "UDP tracker socket");
        else
            tracker_init(&f->tt[d], T.gw.port, f->imei[d], f->tp[d], per);
    }
    return f;
}

static unsigned fleet_acked_of(const struct fleet *f, unsigned d)
{
    return d < f->tcp_n ? f->tt[d].acked : f->ut[d - f->tcp_n].acked;
}

static unsigned fleet_acked(const struct fleet *f)
{
    unsigned a = 0;
    for (unsigned d = 0; d < f->tcp_n + f->udp_n; d++)
        a += fleet_acked_of(f, d);
    return a;
}

static unsigned fleet_total(const struct fleet *f)
{
    return (f->tcp_n + f->udp_n) * f->per;
}

/* Polls every tracker for ms, or until `acked` packets are acknowledged in all. */
static void fleet_run(struct fleet *f, int ms, unsigned acked)
{
    uint64_t deadline = device_now_ms() + (uint64_t)ms;
    while (fleet_acked(f) < acked && device_now_ms() < deadline) {
        if (f->tcp_n)
            trackers_poll(f->tt, f->tcp_n, 0);
        udptrks_poll(f->ut, f->udp_n, 10);
    }
}

/* Device d's rows against what it was told: every ACKed packet stored whole, none in part, no
 * record twice, no row of a packet never sent; with all, every packet stored. */
static void fleet_check_device(const struct fleet *f, unsigned d, bool all)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT ((io->>'%u')::bigint %% 1000000) / 1000, count(*), count(DISTINCT io->>'%u'),"
             " min((io->>'%u')::bigint / 1000000) FROM telemetry.positions_io WHERE imei = %" PRIu64
             " GROUP BY 1 ORDER BY 1",
             TAG_IO_ID, TAG_IO_ID, TAG_IO_ID, f->imei[d]);
    PGresult *r = pgtest_query(T.gw.db.conn, sql);
    bool stored[FLEET_PKTS_MAX] = {false};
    long long rows = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        CHECK(!PQgetisnull(r, i, 0), "device %u: a row without its tag", d);
        long long p = atoll(PQgetvalue(r, i, 0)), n = atoll(PQgetvalue(r, i, 1));
        long long distinct = atoll(PQgetvalue(r, i, 2)), dev = atoll(PQgetvalue(r, i, 3));
        CHECK(p >= 0 && p < f->per && dev == d + 1, "device %u: a row of a packet never sent", d);
        CHECK(n == distinct, "device %u packet %lld: %lld rows, %lld distinct: duplicates", d, p, n,
              distinct);
        CHECK(n == f->records, "device %u packet %lld: %lld of its %u records stored", d, p, n,
              f->records);
        stored[p] = true;
        rows += n;
    }
    PQclear(r);
    CHECK(rows == rows_of(f->imei[d]), "device %u: rows without a tag", d);
    unsigned acked = fleet_acked_of(f, d);
    for (unsigned p = 0; p < f->per; p++) {
        CHECK(p >= acked || stored[p], "device %u packet %u was ACKed but is not stored", d, p);
        CHECK(!all || stored[p], "device %u packet %u is not stored", d, p);
    }
}

/* Every device checked; no tracker saw a wrong ACK or a stray reply. */
static void fleet_check(const struct fleet *f, bool all)
{
    for (unsigned d = 0; d < f->tcp_n + f->udp_n; d++)
        fleet_check_device(f, d, all);
    for (unsigned d = 0; d < f->tcp_n; d++)
        CHECK(f->tt[d].bad_acks == 0 && f->tt[d].junk == 0,
              "TCP device %u: %u wrong ACKs, %u stray bytes", d, f->tt[d].bad_acks, f->tt[d].junk);
    for (unsigned i = 0; i < f->udp_n; i++) {
        const struct udptrk *t = &f->ut[i];
        CHECK(t->bad_acks == 0 && t->junk == 0 && t->dev.stray == 0,
              "UDP device %u: %u wrong ACKs, %u replies no ACK of a datagram sent, %u strays",
              f->tcp_n + i, t->bad_acks, t->junk, t->dev.stray);
    }
}

/* Sends and ACKs of the UDP trackers, printed. */
static void fleet_print(const struct fleet *f, const char *what)
{
    unsigned sends = 0, acks = 0, late = 0;
    for (unsigned i = 0; i < f->udp_n; i++) {
        for (unsigned p = 0; p < f->per; p++)
            sends += f->up[i][p].sends;
        acks += f->ut[i].acks;
        late += f->ut[i].late_acks;
    }
    print_message("%s: %u UDP devices sent %u datagrams for %u packets; %u ACKs, %u more for "
                  "re-sends\n",
                  what, f->udp_n, sends, f->udp_n * f->per, acks, late);
}

/* ---- codecs ------------------------------------------------------------------------------- */

/* Three records at the edges of every column (as test_ingest's), in one datagram of codec. */
static size_t edge_dgram(uint8_t codec, uint64_t imei, uint16_t packet_id, uint8_t avl_packet_id,
                         uint8_t *out, size_t cap)
{
    static const uint8_t nx[5] = {0xde, 0xad, 0xbe, 0xef, 0x00};
    uint64_t ts = (uint64_t)T.gw.wall0_ms - 120000 + 123;
    static const struct avl_record recs[3] = {
        {.lon_e7 = -737654321,
         .lat_e7 = 407654321,
         .altitude_m = -15,
         .angle_deg = 359,
         .generation = 2},
        {.lon_e7 = 1799999999,
         .lat_e7 = -899999999,
         .altitude_m = INT16_MAX,
         .speed_kmh = 255,
         .satellites = 24,
         .priority = 2,
         .event_id = 240,
         .generation = 0},
        {.lon_e7 = 0,
         .lat_e7 = -1,
         .altitude_m = INT16_MIN,
         .angle_deg = 180,
         .speed_kmh = INT16_MAX,
         .satellites = 255,
         .priority = 1,
         .event_id = 11,
         .generation = 5},
    };
    static const uint64_t ts_off[3] = {0, 1000, 1999};
    struct avl_io_elem io[3][7];
    struct avl_record_src src[3];
    for (unsigned i = 0; i < 3; i++) {
        unsigned k = 0;
        io[i][k++] = (struct avl_io_elem){.id = 1, .width = 1, .value = 255 - i};
        io[i][k++] = (struct avl_io_elem){.id = 66, .width = 2, .value = 65535};
        io[i][k++] = (struct avl_io_elem){.id = TAG_IO_ID, .width = 4, .value = 4000000000u + i};
        io[i][k++] = (struct avl_io_elem){.id = 78, .width = 8, .value = UINT64_MAX - i};
        if (codec != AVL_CODEC_8)
            io[i][k++] = (struct avl_io_elem){.id = 10000, .width = 2, .value = i};
        if (codec == AVL_CODEC_8E)
            io[i][k++] = (struct avl_io_elem){.id = 385, .width = 0, .nx_len = 5, .nx = nx};
        src[i] = (struct avl_record_src){.rec = recs[i], .io = io[i], .io_len = (uint16_t)k};
        src[i].rec.ts_ms = ts + ts_off[i];
        src[i].rec.codec = codec;
    }
    int len = avl_encode_udp(out, cap, packet_id, avl_packet_id, imei, codec, src, 3);
    CHECK(len > 0, "avl_encode_udp: %s", avl_strerror(len));
    return (size_t)len;
}

/* One codec: the edge datagram and a realistic one, each ACKed exactly, every row as sent.
 * Returns the records stored. */
static long long codec_round(unsigned c)
{
    static const uint8_t codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
    static const uint16_t pids[3] = {0xCAFE, 0x00FF, 0xFF00};
    static const uint8_t avl_ids[3] = {0x05, 0xFF, 0x80};
    uint8_t codec = codecs[c];
    uint64_t imei = IMEI_BASE + c;
    static uint8_t dg[DGRAM_BYTES];
    size_t len = edge_dgram(codec, imei, pids[c], avl_ids[c], dg, sizeof dg);
    struct udpdev *u = sock();
    send_acked(u, dg, len, 3, avl_codec_name(codec));
    /* The ACK means committed: the rows are there now, with every column as sent. */
    CHECK(rows_of(imei) == 3, "codec %s: %lld rows after the ACK, want 3", avl_codec_name(codec),
          rows_of(imei));
    expect_rows_of_dgram(dg, len);

    /* A realistic packet of the same codec, of packetgen's own device. */
    static struct pktgen_packet gp;
    struct pktgen g;
    pktgen_init(&g, 2000 + c);
    int rlen = pktgen_packet_udp(&g, PKTGEN_REALISTIC, codec, 12, &gp, dg, UDP_BYTES_MAX);
    CHECK(rlen > 0 && gp.records_len == 12, "packetgen: %d, %u records", rlen, gp.records_len);
    CHECK(dg[2] == (uint8_t)(gp.udp_packet_id >> 8) && dg[5] == gp.udp_avl_packet_id,
          "packetgen's header");
    send_acked(u, dg, (size_t)rlen, 12, "a realistic datagram");
    CHECK(rows_of(gp.imei) == 12, "codec %s: %lld realistic rows, want 12", avl_codec_name(codec),
          rows_of(gp.imei));
    expect_rows_of_dgram(dg, (size_t)rlen);
    return 15;
}

/* Every codec over UDP: every column of every row as sent, every ACK exact; the UDP counters
 * in /metrics and the final counters agree with what was sent. */
static void test_codecs(void **state)
{
    (void)state;
    begin("codecs");
    start(NULL);
    long long want = 0;
    for (unsigned c = 0; c < 3; c++)
        want += codec_round(c);
    CHECK(rows_total() == want, "%lld rows in all, want %lld", rows_total(), want);
    CHECK(metric(UDP_M("received_total"), NULL, NULL) == 6, "received");
    CHECK(metric(UDP_M("taken_total"), NULL, NULL) == 6, "taken");
    CHECK(metric(UDP_M("acked_total"), NULL, NULL) == 6, "acked");
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == 0, "duplicates");
    CHECK(metric(UDP_M("invalid_total"), NULL, NULL) == 0, "invalid");
    CHECK(metric(UDP_M("dropped_total"), NULL, NULL) == 0, "dropped");
    CHECK(metric("avlgate_udp_devices", NULL, NULL) == 6, "six UDP devices open");
    print_message("codecs: %.0f of 6 datagrams handed to the other shard\n",
                  metric(UDP_M("handed_off_total"), NULL, NULL));
    /* device_state follows each device's newest record. */
    CHECK(gwproc_sql_ll(&T.gw, "SELECT count(*) FROM public.device_state WHERE instance = "
                               "'test_udp' AND last_ts IS NOT NULL AND dedup IS NOT NULL") == 6,
          "device_state rows missing");
    struct gwproc_stats st = gwproc_term(&T.gw);
    CHECK(st.packets == 6 && st.stored == want && st.duplicates == 0 && st.acked == 6 &&
              st.invalid == 0,
          "counters: packets %lld stored %lld duplicates %lld acked %lld invalid %lld", st.packets,
          st.stored, st.duplicates, st.acked, st.invalid);
}

/* ---- twice, ack_lost, nat_rebind ------------------------------------------------------------ */

/* Sends dg twice back-to-back from u; both copies must be ACKed exactly, nothing else. */
static void send_twice(struct udpdev *u, const uint8_t *dg, size_t len, uint8_t records,
                       const char *what)
{
    CHECK(udpdev_send(u, dg, len) == 0 && udpdev_send(u, dg, len) == 0, "%s: send", what);
    expect_ack(u, dg, records, what);
    expect_ack(u, dg, records, what);
    expect_silence(u, QUIET_MS, what);
}

/* The same datagram twice at once: to a device not yet open (both wait for its state), then to
 * the open device (both in one batch). Both copies ACKed, the records stored once. */
static void test_twice(void **state)
{
    (void)state;
    begin("twice");
    start((const char *const[]){"--batch-ms", "100", NULL});
    uint64_t imei = IMEI_BASE + 20;
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    uint8_t d1[DGRAM_BYTES], d2[DGRAM_BYTES];
    size_t l1 = dgram_series(imei, 0x0101, 1, AVL_CODEC_8E, ts, 2000, 4, d1, sizeof d1);
    size_t l2 = dgram_series(imei, 0x0102, 2, AVL_CODEC_8, ts + 4000, 2010, 3, d2, sizeof d2);
    struct udpdev *u = sock();
    send_twice(u, d1, l1, 4, "the first datagram twice, its device not open");
    CHECK(rows_of(imei) == 4, "%lld rows, want 4", rows_of(imei));
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == 1, "one duplicate datagram counted");
    send_twice(u, d2, l2, 3, "the second datagram twice, its device open");
    CHECK(rows_of(imei) == 7, "%lld rows, want 7", rows_of(imei));
    CHECK(tags_repeated() == 0, "a record stored twice");
    CHECK(metric(UDP_M("received_total"), NULL, NULL) == 4, "received");
    CHECK(metric(UDP_M("taken_total"), NULL, NULL) == 4, "taken");
    CHECK(metric(UDP_M("acked_total"), NULL, NULL) == 4, "acked");
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == 2, "duplicate datagrams");
    CHECK(metric("avlgate_records_duplicate_total", NULL, NULL) == 7, "duplicate records");
    expect_rows_of_dgram(d1, l1);
    expect_rows_of_dgram(d2, l2);
}

/* The ACK lost: the same bytes again after the commit are ACKed again and stored once; again
 * after the device was closed as idle (its window then comes from the database). */
static void test_ack_lost(void **state)
{
    (void)state;
    begin("ack_lost");
    start((const char *const[]){"--state-idle-s", "1", NULL});
    uint64_t imei = IMEI_BASE + 30;
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    uint8_t d1[DGRAM_BYTES], d2[DGRAM_BYTES];
    size_t l1 = dgram_series(imei, 0xBEEF, 0x42, AVL_CODEC_16, ts, 3000, 5, d1, sizeof d1);
    size_t l2 = dgram_series(imei, 0xBEF0, 0x43, AVL_CODEC_8E, ts + 5000, 3010, 2, d2, sizeof d2);
    struct udpdev *u = sock();
    send_acked(u, d1, l1, 5, "the datagram");
    CHECK(rows_of(imei) == 5, "%lld rows right after the ACK, want 5", rows_of(imei));
    send_acked(u, d1, l1, 5, "the same bytes again (the ACK was lost)");
    CHECK(rows_of(imei) == 5, "re-sent: %lld rows, want 5", rows_of(imei));
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == 1, "one duplicate datagram");

    /* Quiet for --state-idle-s: the UDP device is closed; its window stays in device_state. */
    double open;
    uint64_t deadline = device_now_ms() + 15000;
    while ((open = metric("avlgate_udp_devices", NULL, NULL)) > 0 && device_now_ms() < deadline)
        device_sleep_ms(100); /* bounded polling of /metrics */
    CHECK(open == 0, "the idle UDP device was not closed within 15 s");
    send_acked(u, d1, l1, 5, "the same bytes after the device was closed as idle");
    CHECK(rows_of(imei) == 5, "re-sent to a reloaded device: %lld rows, want 5", rows_of(imei));
    send_acked(u, d2, l2, 2, "the next datagram");
    CHECK(rows_of(imei) == 7, "%lld rows, want 7", rows_of(imei));
    CHECK(tags_repeated() == 0, "a record stored twice");
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == 2, "two duplicate datagrams");
    CHECK(metric(UDP_M("acked_total"), NULL, NULL) == 4, "four ACKs");
    expect_rows_of_dgram(d1, l1);
    expect_rows_of_dgram(d2, l2);
}

/* A NAT rebinding, three times: socket k (a new source port) sends packet k, then re-sends
 * packet k - 1, which socket k - 1 sent. Each ACK goes to the socket that sent the datagram. */
static void test_nat_rebind(void **state)
{
    (void)state;
    enum { K = 4, RECS = 3 };
    begin("nat_rebind");
    start(NULL);
    uint64_t imei = IMEI_BASE + 40;
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    static uint8_t dg[K][DGRAM_BYTES];
    size_t len[K];
    struct udpdev *s[K];
    for (unsigned k = 0; k < K; k++) {
        len[k] = dgram_series(imei, (uint16_t)(0x4000 + k), (uint8_t)(0x10 + k), AVL_CODEC_8,
                              ts + k * RECS * 1000, 4000 + k * 10, RECS, dg[k], sizeof dg[k]);
        s[k] = sock();
        for (unsigned j = 0; j < k; j++)
            CHECK(s[j]->local_port != s[k]->local_port, "the source port did not change");
        send_acked(s[k], dg[k], len[k], RECS, "a packet from a new source port");
        CHECK(rows_of(imei) == (long long)(k + 1) * RECS, "%lld rows after packet %u",
              rows_of(imei), k);
        if (k > 0)
            send_acked(s[k], dg[k - 1], len[k - 1], RECS,
                       "the previous socket's packet re-sent from the new one");
    }
    /* One more packet from the newest socket and the one before at once (a rebinding while
     * a datagram is in flight): each copy's ACK goes to the socket that sent it. */
    uint8_t last[DGRAM_BYTES];
    size_t ll = dgram_series(imei, 0x4100, 0x20, AVL_CODEC_8E, ts + K * RECS * 1000, 4100, RECS,
                             last, sizeof last);
    CHECK(udpdev_send(s[K - 1], last, ll) == 0 && udpdev_send(s[K - 2], last, ll) == 0, "send");
    expect_ack(s[K - 1], last, RECS, "one copy of a packet sent from two sockets at once");
    expect_ack(s[K - 2], last, RECS, "the other copy, from the socket before");
    for (unsigned k = 0; k < K; k++)
        expect_silence(s[k], k == 0 ? QUIET_MS : 0, "an old socket after its own ACKs");
    CHECK(rows_of(imei) == (K + 1) * RECS, "%lld rows, want %u", rows_of(imei), (K + 1) * RECS);
    CHECK(tags_repeated() == 0, "a record stored twice");
    for (unsigned k = 0; k < K; k++)
        expect_rows_of_dgram(dg[k], len[k]);
    expect_rows_of_dgram(last, ll);
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == K, "duplicate datagrams");
    CHECK(metric("avlgate_udp_devices", NULL, NULL) == 1, "one UDP device for the IMEI");
    print_message("nat_rebind: %.0f of %u datagrams handed to the other shard\n",
                  metric(UDP_M("handed_off_total"), NULL, NULL), 2 * K + 1);
}

/* ---- sigkill ------------------------------------------------------------------------------ */

/* UDP trackers (one datagram in flight, re-sent every 300 ms until ACKed) while the gateway is
 * SIGKILLed three times and restarted: every ACKed packet stored, none twice or in part; at the
 * end, all of them. */
static void test_sigkill(void **state)
{
    (void)state;
    begin("sigkill");
    gwproc_start(&T.gw, NULL); /* no --metrics: its port is not waited for after a SIGKILL */
    struct fleet *f = fleet_make(0, 8, 30, 2);
    for (unsigned i = 0; i < f->udp_n; i++) {
        f->ut[i].resend_ms = 300;
        f->ut[i].gap_ms = 5;
    }
    static const char *const batch_args[3][3] = {
        {"--batch-ms", "40", NULL}, {"--batch-ms", "5", NULL}, {"--batch-ms", "40", NULL}};
    const unsigned total = fleet_total(f);
    for (unsigned k = 0; k < 3; k++) {
        unsigned want = total * (k + 1) / 5;
        fleet_run(f, 30000, want);
        CHECK(fleet_acked(f) >= want, "traffic: %u of %u ACKed", fleet_acked(f), want);
        gwproc_kill(&T.gw);
        fleet_check(f, false);
        fleet_run(f, 300, UINT32_MAX); /* the devices re-send into nothing meanwhile */
        gwproc_start(&T.gw, batch_args[k]);
    }
    fleet_run(f, 60000, total);
    CHECK(fleet_acked(f) == total, "%u of %u packets ACKed after the restarts", fleet_acked(f),
          total);
    fleet_check(f, true);
    CHECK(rows_total() == (long long)total * f->records, "%lld rows, want %u", rows_total(),
          total * f->records);
    fleet_print(f, "sigkill");
}

/* ---- burst -------------------------------------------------------------------------------- */

enum { BURST_DEVICES = 2500, BURST_PER = 2, BURST_BYTES = 256, BURST_CHUNK = 250 };

struct burst {
    struct udptrk t[BURST_DEVICES];
    struct udptrk_pkt p[BURST_DEVICES][BURST_PER];
    uint8_t bytes[BURST_DEVICES][BURST_PER][BURST_BYTES];
    unsigned opened;
};

static struct burst *B;

static void burst_free(void)
{
    for (unsigned i = 0; B && i < B->opened; i++)
        udptrk_stop(&B->t[i]);
    free(B);
    B = NULL;
}

static unsigned burst_acked(void)
{
    unsigned a = 0;
    for (unsigned i = 0; i < B->opened; i++)
        a += B->t[i].acked;
    return a;
}

/* Many new devices at once, each re-sending until ACKed: their first datagrams wait for state
 * loads, more than half the held copies, so the socket pauses; whatever the kernel or the
 * gateway drops (counted) is re-sent: every packet stored exactly once, every ACK right. */
static void test_burst(void **state)
{
    (void)state;
    begin("burst");
    start(NULL);
    B = calloc(1, sizeof *B);
    assert_non_null(B);
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    for (unsigned d = 0; d < BURST_DEVICES; d++) {
        for (unsigned k = 0; k < BURST_PER; k++) {
            size_t l = dgram_series(IMEI_BASE + 100000 + d, (uint16_t)(0xB000 + k), (uint8_t)k,
                                    AVL_CODEC_8, ts + k * 1000, 10000000 + d * 10 + k, 1,
                                    B->bytes[d][k], BURST_BYTES);
            B->p[d][k] =
                (struct udptrk_pkt){B->bytes[d][k], l, (uint16_t)(0xB000 + k), (uint8_t)k, 1, 0, 0};
        }
        CHECK(udptrk_init(&B->t[d], T.gw.port, B->p[d], BURST_PER) == 0, "socket %u", d);
        B->t[d].resend_ms = 2000;
        B->opened++;
    }
    uint64_t t0 = device_now_ms(), deadline = t0 + 120000;
    while (burst_acked() < BURST_DEVICES * BURST_PER && device_now_ms() < deadline)
        for (unsigned c = 0; c < BURST_DEVICES; c += BURST_CHUNK)
            udptrks_poll(&B->t[c], BURST_CHUNK, c + BURST_CHUNK >= BURST_DEVICES ? 5 : 0);
    unsigned sends = 0, late = 0, bad = 0;
    for (unsigned d = 0; d < BURST_DEVICES; d++) {
        sends += B->p[d][0].sends + B->p[d][1].sends;
        late += B->t[d].late_acks;
        bad += B->t[d].bad_acks + B->t[d].junk + B->t[d].dev.stray;
    }
    print_message("burst: %u devices x %u packets ACKed in %llu ms; %u datagrams sent, %u late "
                  "ACKs; dropped: backlog_full %.0f, devices_full %.0f; received %.0f\n",
                  BURST_DEVICES, BURST_PER, (unsigned long long)(device_now_ms() - t0), sends, late,
                  metric(UDP_M("dropped_total"), "reason", "backlog_full"),
                  metric(UDP_M("dropped_total"), "reason", "devices_full"),
                  metric(UDP_M("received_total"), NULL, NULL));
    CHECK(burst_acked() == BURST_DEVICES * BURST_PER, "%u of %u packets ACKed", burst_acked(),
          BURST_DEVICES * BURST_PER);
    CHECK(bad == 0, "%u wrong ACKs or stray replies", bad);
    CHECK(rows_total() == BURST_DEVICES * BURST_PER, "%lld rows, want %u", rows_total(),
          BURST_DEVICES * BURST_PER);
    CHECK(tags_repeated() == 0, "a record stored twice");
}

/* ---- hostile ------------------------------------------------------------------------------ */

enum { HOSTILE_MAX = 20 };

/* A datagram that must get no reply, and the reason it must be counted under. */
struct hostile {
    const char *what, *reason;
    const uint8_t *bytes;
    size_t len;
    bool decoded; /* the gateway decodes it: the codec's verdict must be `reason` */
};

static struct {
    struct hostile h[HOSTILE_MAX];
    unsigned n;
    uint8_t buf[HOSTILE_MAX][DGRAM_BYTES + 2];
    uint8_t zeros[65000];
} H;

/* Adds a copy of p[0 .. len-1] (len <= DGRAM_BYTES + 2); returns the copy to mutate. */
static uint8_t *hostile_add(const char *what, const char *reason, const uint8_t *p, size_t len)
{
    assert_true(H.n < HOSTILE_MAX && len <= sizeof H.buf[0]);
    memcpy(H.buf[H.n], p, len);
    H.h[H.n] = (struct hostile){what, reason, H.buf[H.n], len, true};
    return H.buf[H.n++];
}

static void put_be16(uint8_t *p, size_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* One valid 8E datagram of exactly `bytes` bytes: one tagged record padded with an NX element. */
static size_t dgram_sized(uint64_t imei, uint32_t tag, size_t bytes, uint8_t *out, size_t cap)
{
    static const uint8_t pad[DGRAM_BYTES] = {0};
    struct avl_io_elem io[2] = {{.id = TAG_IO_ID, .width = 4, .value = tag},
                                {.id = 999, .width = 0, .nx_len = 0, .nx = pad}};
    struct avl_record_src src = {
        .rec = {.ts_ms = gwproc_recent_ts_ms(&T.gw) + tag, .satellites = 7, .codec = AVL_CODEC_8E},
        .io = io,
        .io_len = 2};
    int len0 = avl_encode_udp(out, cap, 0x5151, 0x51, imei, AVL_CODEC_8E, &src, 1);
    CHECK(len0 > 0 && (size_t)len0 <= bytes && bytes - (size_t)len0 <= sizeof pad, "size");
    io[1].nx_len = (uint16_t)(bytes - (size_t)len0);
    int len = avl_encode_udp(out, cap, 0x5151, 0x51, imei, AVL_CODEC_8E, &src, 1);
    CHECK(len > 0 && (size_t)len == bytes, "a datagram of %zu bytes: %d", bytes, len);
    return (size_t)len;
}

/* The good datagram g (15-digit IMEI, 2 records) spoilt one way at a time. */
static void hostile_from_good(const uint8_t *g, size_t len)
{
    enum { IMEI_AT = 8, CODEC_AT = 8 + 15 };
    hostile_add("cut short", "udp_length_mismatch", g, len - 7);
    uint8_t *b = hostile_add("cut in the IMEI, the length field fixed up", "truncated", g, 12);
    put_be16(b, 12 - 2);
    b = hostile_add("one byte too many", "udp_length_mismatch", g, len + 1);
    b[len] = 0;
    b = hostile_add("one byte too many, the length field fixed up", "trailing_bytes", g, len + 1);
    b[len] = g[len - 1]; /* another count 2 after the real one */
    put_be16(b, len + 1 - 2);
    b = hostile_add("a length field that lies", "udp_length_mismatch", g, len);
    put_be16(b, len - 2 + 5);
    b = hostile_add("a non-digit IMEI", "imei_digits", g, len);
    b[IMEI_AT + 7] = 'x';
    b = hostile_add("count 2 != count 1", "count_mismatch", g, len);
    b[len - 1] = 1;
    b = hostile_add("an unknown codec", "codec_unknown", g, len);
    b[CODEC_AT] = 0x09;
    b = hostile_add("a GPRS codec (12)", "wrong_frame_kind", g, len);
    b[CODEC_AT] = AVL_CODEC_12;
    b = hostile_add("IMEI length 0", "imei_length", g, len);
    put_be16(b + 6, 0);
    b = hostile_add("IMEI length 18", "imei_length", g, len);
    put_be16(b + 6, 18);
}

/* Datagrams that owe nothing to a good one. */
static void hostile_other(void)
{
    uint64_t seed = 13;
    uint8_t rnd[200];
    for (size_t i = 0; i < sizeof rnd; i++)
        rnd[i] = (uint8_t)tu_rand_u64(&seed);
    hostile_add("random bytes", NULL, rnd, sizeof rnd); /* reason: the codec's verdict */
    hostile_add("an empty datagram", "truncated", rnd, 0);
    hostile_add("a lone 0xFF", "truncated", (const uint8_t[]){0xFF}, 1);
    uint8_t b[DGRAM_BYTES + 2];
    size_t l = dgram_series(UINT64_C(99999999999999999), 0x0707, 7, AVL_CODEC_8,
                            gwproc_recent_ts_ms(&T.gw), 7000, 1, b, sizeof b);
    hostile_add("an IMEI no handoff key holds", "imei_out_of_range", b, l);
    H.h[H.n - 1].decoded = false;
    l = dgram_sized(IMEI_BASE + 61, 6100, UDP_BYTES_MAX + 1, b, sizeof b);
    hostile_add("a valid datagram one byte over --udp-bytes-max", "datagram_too_long", b, l);
    H.h[H.n - 1].decoded = false;
    assert_true(H.n < HOSTILE_MAX);
    H.h[H.n++] =
        (struct hostile){"65,000 zero bytes", "datagram_too_long", H.zeros, sizeof H.zeros, false};
}

/* Every hostile datagram's reason is what the codec says of it (random bytes take it). */
static void hostile_reasons(void)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    for (unsigned i = 0; i < H.n; i++) {
        struct hostile *h = &H.h[i];
        struct avl_packet pkt;
        int rc = avl_decode_udp(h->bytes, h->len, &pkt, recs);
        if (!h->decoded)
            continue;
        CHECK(rc < 0, "%s: the codec takes it", h->what);
        if (!h->reason)
            h->reason = avl_strerror(rc);
        CHECK(strcmp(h->reason, avl_strerror(rc)) == 0, "%s: the codec says %s, want %s", h->what,
              avl_strerror(rc), h->reason);
    }
}

/* Hostile datagrams, each from a socket of its own: none answered, each counted under its
 * reason, nothing stored; the gateway then serves a datagram of exactly --udp-bytes-max. */
static void test_hostile(void **state)
{
    (void)state;
    begin("hostile");
    start(NULL);
    memset(&H, 0, sizeof H);
    uint8_t g[DGRAM_BYTES];
    size_t gl = dgram_series(IMEI_BASE + 60, 0x6060, 0x60, AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw),
                             6000, 2, g, sizeof g);
    hostile_from_good(g, gl);
    hostile_other();
    hostile_reasons();
    struct udpdev *s[HOSTILE_MAX];
    for (unsigned i = 0; i < H.n; i++) {
        s[i] = sock();
        CHECK(udpdev_send(s[i], H.h[i].bytes, H.h[i].len) == 0, "%s: send: %s", H.h[i].what,
              strerror(errno));
    }
    double got = metric_at_least(UDP_M("received_total"), NULL, NULL, H.n, WAIT_MS);
    CHECK(got == H.n, "%.0f of %u datagrams received", got, H.n);
    for (unsigned i = 0; i < H.n; i++)
        expect_silence(s[i], i == 0 ? QUIET_MS : 0, H.h[i].what);
    for (unsigned i = 0; i < H.n; i++) {
        unsigned want = 0;
        for (unsigned j = 0; j < H.n; j++)
            want += strcmp(H.h[j].reason, H.h[i].reason) == 0;
        double v = metric(UDP_M("invalid_total"), "reason", H.h[i].reason);
        CHECK(v == want, "%s: %.0f counted as %s, want %u", H.h[i].what, v, H.h[i].reason, want);
    }
    CHECK(metric(UDP_M("invalid_total"), NULL, NULL) == H.n, "invalid datagrams in all");
    CHECK(metric(UDP_M("dropped_total"), NULL, NULL) == 0, "dropped");
    CHECK(metric(UDP_M("taken_total"), NULL, NULL) == 0, "taken");
    CHECK(metric(UDP_M("acked_total"), NULL, NULL) == 0, "acked");
    CHECK(rows_total() == 0, "%lld rows stored", rows_total());
    CHECK(gwproc_running(&T.gw), "the gateway died");

    /* A good device is served: a datagram of exactly --udp-bytes-max. */
    uint8_t b[DGRAM_BYTES + 2];
    size_t bl = dgram_sized(IMEI_BASE + 62, 6200, UDP_BYTES_MAX, b, sizeof b);
    send_acked(sock(), b, bl, 1, "a datagram of exactly --udp-bytes-max");
    expect_rows_of_dgram(b, bl);
    CHECK(rows_total() == 1, "%lld rows, want 1", rows_total());
    struct prom_text t;
    scrape(&t);
    for (size_t i = 0; i < t.samples_len; i++)
        if (strcmp(t.samples[i].name, UDP_M("invalid_total")) == 0)
            print_message("hostile: shard %s %s %.0f\n", prom_label(&t.samples[i], "shard"),
                          prom_label(&t.samples[i], "reason"), t.samples[i].value);
    prom_free(&t);
}

/* ---- side_by_side ------------------------------------------------------------------------- */

/* Waits until gauge name (summed over shards) is want; it must be by then. */
static void gauge_reaches(const char *name, double want, const char *what)
{
    uint64_t deadline = device_now_ms() + WAIT_MS;
    double v;
    while ((v = metric(name, NULL, NULL)) != want && device_now_ms() < deadline)
        device_sleep_ms(20); /* bounded polling of /metrics */
    CHECK(v == want, "%s: %s is %.0f, want %.0f", what, name, v, want);
}

/* Packets 0..3 of one IMEI, each a TCP frame tf[i] and the datagram ud[i] of the same records. */
struct both {
    uint64_t imei;
    uint8_t tf[4][FLEET_BYTES], ud[4][FLEET_BYTES];
    size_t tl[4], ul[4];
};

static void both_make(struct both *b, uint64_t imei)
{
    b->imei = imei;
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    for (unsigned i = 0; i < 4; i++) {
        b->tl[i] = gwproc_encode_series(i % 2 ? AVL_CODEC_8E : AVL_CODEC_16, ts + i * 2000, 1000,
                                        7000 + i * 10, 2, b->tf[i], FLEET_BYTES);
        int n = udpdev_from_tcp(b->tf[i], b->tl[i], imei, (uint16_t)(0x7000 + i),
                                (uint8_t)(0x70 + i), b->ud[i], FLEET_BYTES);
        CHECK(n > 0, "udpdev_from_tcp: %d", n);
        b->ul[i] = (size_t)n;
    }
}

/* One IMEI over TCP and UDP: one window whichever way a packet comes or comes again. */
static void shared_imei(void)
{
    static struct both b;
    both_make(&b, IMEI_BASE + 70);
    struct device d;
    struct udpdev *u = sock();
    gwproc_dev_open(&T.gw, &d, b.imei);
    gwproc_send_acked(&d, b.tf[0], b.tl[0], 2, 0, 0);
    send_acked(u, b.ud[0], b.ul[0], 2, "packet 0 over UDP after TCP");
    CHECK(rows_of(b.imei) == 2, "%lld rows, want 2", rows_of(b.imei));
    send_acked(u, b.ud[1], b.ul[1], 2, "packet 1 over UDP beside the connection");
    CHECK(rows_of(b.imei) == 4, "%lld rows, want 4", rows_of(b.imei));
    gwproc_send_acked(&d, b.tf[1], b.tl[1], 2, 0, 0);
    CHECK(rows_of(b.imei) == 4, "packet 1 over TCP after UDP: %lld rows, want 4", rows_of(b.imei));
    CHECK(device_quiet(&d), "the connection got more than its own ACKs");
    CHECK(metric("avlgate_udp_devices", NULL, NULL) == 0, "a UDP device beside the connection");

    device_close(&d);
    gauge_reaches("avlgate_connections_open", 0, "the connection closed");
    send_acked(u, b.ud[0], b.ul[0], 2, "packet 0 over UDP after the connection closed");
    send_acked(u, b.ud[2], b.ul[2], 2, "packet 2 over UDP only");
    CHECK(rows_of(b.imei) == 6, "%lld rows, want 6", rows_of(b.imei));
    CHECK(metric("avlgate_udp_devices", NULL, NULL) == 1, "no UDP device after the close");

    gwproc_dev_open(&T.gw, &d, b.imei); /* takes the IMEI from its UDP device */
    gwproc_send_acked(&d, b.tf[2], b.tl[2], 2, 0, 0);
    CHECK(rows_of(b.imei) == 6, "packet 2 over TCP after UDP: %lld rows", rows_of(b.imei));
    gauge_reaches("avlgate_udp_devices", 0, "a connection took the UDP device's IMEI");
    send_acked(u, b.ud[3], b.ul[3], 2, "packet 3 over UDP beside the new connection");
    gwproc_send_acked(&d, b.tf[3], b.tl[3], 2, 0, 0);
    CHECK(device_quiet(&d), "the connection got more than its own ACKs");
    device_close(&d);
    CHECK(rows_of(b.imei) == 8, "%lld rows, want 8", rows_of(b.imei));
    for (unsigned i = 0; i < 4; i++)
        expect_rows_of_dgram(b.ud[i], b.ul[i]);
    CHECK(metric("avlgate_records_duplicate_total", NULL, NULL) == 10, "duplicate records");
    CHECK(metric(UDP_M("duplicate_total"), NULL, NULL) == 2, "duplicate datagrams");
}

/* A TCP device whose window was released while it was quiet (--state-idle-s): a datagram of
 * its IMEI has the window loaded again and is taken under the connection; a packet sent on one
 * way and re-sent the other is still a duplicate. */
static void test_dormant(void **state)
{
    (void)state;
    begin("dormant");
    start((const char *const[]){"--state-idle-s", "1", NULL});
    static struct both b;
    both_make(&b, IMEI_BASE + 75);
    struct device d;
    struct udpdev *u = sock();
    gwproc_dev_open(&T.gw, &d, b.imei);
    gwproc_send_acked(&d, b.tf[0], b.tl[0], 2, 0, 0);
    device_sleep_ms(3000); /* quiet for 1 s, looked at every 0.5 s: the window goes */
    send_acked(u, b.ud[1], b.ul[1], 2, "packet 1 over UDP to the dormant device");
    send_acked(u, b.ud[0], b.ul[0], 2, "packet 0 (sent over TCP) again over UDP");
    CHECK(rows_of(b.imei) == 4, "%lld rows, want 4", rows_of(b.imei));
    gwproc_send_acked(&d, b.tf[1], b.tl[1], 2, 0, 0);
    gwproc_send_acked(&d, b.tf[2], b.tl[2], 2, 0, 0);
    CHECK(device_quiet(&d), "the connection got more than its own ACKs");
    device_close(&d);
    CHECK(rows_of(b.imei) == 6, "%lld rows, want 6", rows_of(b.imei));
    for (unsigned i = 0; i < 3; i++)
        expect_rows_of_dgram(b.ud[i], b.ul[i]);
    CHECK(metric("avlgate_udp_devices", NULL, NULL) == 0, "a UDP device beside the connection");
    struct gwproc_stats st = gwproc_term(&T.gw);
    long long released = gwproc_shard_sum(&T.gw, "windows_released");
    long long reloads = gwproc_shard_sum(&T.gw, "state_reloads");
    CHECK(released >= 1 && reloads >= 1, "windows released %lld, reloads %lld", released, reloads);
    CHECK(st.stored == 6 && st.duplicates == 4, "stored %lld, duplicates %lld", st.stored,
          st.duplicates);
}

/* TCP and UDP side by side: one IMEI both ways, then four TCP and four UDP trackers at once. */
static void test_side_by_side(void **state)
{
    (void)state;
    begin("side_by_side");
    start(NULL);
    shared_imei();
    long long before = rows_total();
    struct fleet *f = fleet_make(4, 4, 20, 3);
    fleet_run(f, 60000, fleet_total(f));
    CHECK(fleet_acked(f) == fleet_total(f), "%u of %u packets ACKed", fleet_acked(f),
          fleet_total(f));
    fleet_check(f, true);
    CHECK(rows_total() == before + (long long)fleet_total(f) * f->records, "%lld rows",
          rows_total());
    CHECK(tags_repeated() == 0, "a record stored twice");
    fleet_print(f, "side_by_side");
}

/* Another IMEI owned by the same shard as imei (the router is the gateway's), from start on. */
static uint64_t same_shard_imei(uint64_t imei, uint64_t start)
{
    size_t bytes = router_storage_bytes(GWPROC_SHARDS, ROUTER_VNODES_DEFAULT);
    bytes = (bytes + 63) / 64 * 64;
    void *store = aligned_alloc(64, bytes);
    assert_non_null(store);
    struct router r;
    assert_int_equal(router_init(&r, GWPROC_SHARDS, ROUTER_VNODES_DEFAULT, store, bytes), 0);
    uint64_t x = start;
    while (router_owner(&r, x) != router_owner(&r, imei))
        x++;
    free(store);
    return x;
}

/* ---- poison ------------------------------------------------------------------------------- */

/* A datagram the database refuses (a CHECK on event_id) in a batch with a good device's: the
 * good one is ACKed; the poison is never, neither its two copies sent at once nor a re-send
 * later (its records must not be taken for duplicates); the device's next datagram is served. */
static void test_poison(void **state)
{
    (void)state;
    begin("poison");
    start((const char *const[]){"--batch-ms", "300", NULL});
    pgtest_exec(T.gw.db.conn, "ALTER TABLE telemetry.positions ADD CONSTRAINT poison"
                              " CHECK (event_id <> 4242)");
    const uint64_t bad = IMEI_BASE + 42, good = same_shard_imei(bad, IMEI_BASE + 43);
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    struct gwproc_rspec rs[3];
    for (unsigned i = 0; i < 3; i++)
        rs[i] = (struct gwproc_rspec){.ts_ms = ts + i * 1000,
                                      .tag = 4200 + i,
                                      .satellites = 6,
                                      .event_id = i == 1 ? 4242 : 0};
    uint8_t frame[DGRAM_BYTES], pb[DGRAM_BYTES], pg[DGRAM_BYTES], next[DGRAM_BYTES];
    size_t fl = gwproc_encode_tagged(AVL_CODEC_8E, rs, 3, frame, sizeof frame);
    int lb = udpdev_from_tcp(frame, fl, bad, 0x4242, 0x42, pb, sizeof pb);
    CHECK(lb > 0, "udpdev_from_tcp");
    size_t lg = dgram_series(good, 0x4343, 0x43, AVL_CODEC_8, ts, 4300, 2, pg, sizeof pg);
    size_t ln = dgram_series(bad, 0x4244, 0x44, AVL_CODEC_8, ts + 5000, 4210, 2, next, sizeof next);
    struct udpdev *ub = sock(), *ug = sock();
    /* The poison twice at once and the good datagram, all within one 300 ms batch. */
    CHECK(udpdev_send(ub, pb, (size_t)lb) == 0 && udpdev_send(ug, pg, lg) == 0 &&
              udpdev_send(ub, pb, (size_t)lb) == 0,
          "send");
    expect_ack(ug, pg, 2, "the good device in the poisoned batch");
    CHECK(rows_of(good) == 2, "good device: %lld rows", rows_of(good));
    expect_silence(ub, QUIET_MS, "the poison datagram sent twice at once");
    gwproc_wait_log(&T.gw, "packet rejected by the database", 1, WAIT_MS);
    send_unanswered(ub, pb, (size_t)lb, "the poison datagram re-sent after its refusal");
    CHECK(rows_of(bad) == 0, "poison rows stored: %lld", rows_of(bad));
    send_acked(ub, next, ln, 2, "the poison device's next datagram");
    CHECK(rows_of(bad) == 2, "the poison device's next datagram: %lld rows", rows_of(bad));
    CHECK(gwproc_running(&T.gw), "the gateway died");
}

/* The next bytes on d: one Codec 12 command frame carrying payload. */
static void expect_command(struct device *d, const char *payload)
{
    static uint8_t got[2048], want[2048];
    int wlen =
        avl_encode_command(want, sizeof want, (const uint8_t *)payload, (uint32_t)strlen(payload));
    assert_true(wlen > 0);
    int rc = device_read(d, got, (size_t)wlen, WAIT_MS);
    CHECK(rc == 0, "no command frame within %d ms: %s", WAIT_MS, strerror(-rc));
    CHECK(memcmp(got, want, (size_t)wlen) == 0, "the frame is not the command '%s'", payload);
}

/* A device known over UDP only gets no command (none over UDP): an open command for it waits,
 * the sweep (every second) passes over it and the datagrams go on; once the IMEI connects over
 * TCP the command is written to the connection. */
static void test_commands_wait_for_tcp(void **state)
{
    (void)state;
    begin("commands_wait_for_tcp");
    start((const char *const[]){"--cmd-sweep-s", "1", NULL});
    const uint64_t imei = IMEI_BASE + 60;
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    uint8_t d1[DGRAM_BYTES], d2[DGRAM_BYTES];
    size_t l1 = dgram_series(imei, 0x6000, 1, AVL_CODEC_8, ts, 6000, 2, d1, sizeof d1);
    size_t l2 = dgram_series(imei, 0x6000, 2, AVL_CODEC_8, ts + 2000, 6010, 2, d2, sizeof d2);
    struct udpdev *u = sock();
    send_acked(u, d1, l1, 2, "a UDP device's first datagram");
    long long id = gwproc_sql_ll(&T.gw,
                                 "INSERT INTO public.commands (imei, payload) VALUES (%" PRIu64
                                 ", 'getver') RETURNING id",
                                 imei);
    device_sleep_ms(2500); /* two sweeps or more */
    CHECK(gwproc_running(&T.gw), "the gateway died during the sweeps");
    CHECK(gwproc_sql_ll(&T.gw,
                        "SELECT count(*) FROM public.commands WHERE id = %lld AND "
                        "status = 'pending' AND attempts = 0",
                        id) == 1,
          "the command did not wait for a TCP connection");
    send_acked(u, d2, l2, 2, "the UDP device's next datagram after the sweeps");
    struct device d;
    gwproc_dev_open(&T.gw, &d, imei);
    expect_command(&d, "getver");
    device_close(&d);
    CHECK(rows_of(imei) == 4, "rows %lld, want 4", rows_of(imei));
}

/* --udp-devices-max 1: a second IMEI on the same shard is dropped (devices_full, no reply)
 * while the first is open, and served once the first was closed as idle. */
static void test_devices_full(void **state)
{
    (void)state;
    begin("devices_full");
    start((const char *const[]){"--udp-devices-max", "1", "--state-idle-s", "3", NULL});
    const uint64_t a = IMEI_BASE + 50, b = same_shard_imei(a, IMEI_BASE + 51);
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    uint8_t da[DGRAM_BYTES], db[DGRAM_BYTES];
    size_t la = dgram_series(a, 0x5000, 1, AVL_CODEC_8, ts, 5000, 2, da, sizeof da);
    size_t lb = dgram_series(b, 0x5100, 1, AVL_CODEC_8E, ts, 5100, 3, db, sizeof db);
    struct udpdev *ua = sock(), *ub = sock();
    send_acked(ua, da, la, 2, "the first UDP device of the shard");
    send_unanswered(ub, db, lb, "a second UDP device on the same shard");
    CHECK(metric(UDP_M("dropped_total"), "reason", "devices_full") == 1, "devices_full");
    CHECK(rows_of(b) == 0, "the dropped datagram stored %lld rows", rows_of(b));
    uint64_t deadline = device_now_ms() + 15000;
    double open;
    while ((open = metric("avlgate_udp_devices", NULL, NULL)) > 0 && device_now_ms() < deadline)
        device_sleep_ms(100); /* bounded polling of /metrics */
    CHECK(open == 0, "the idle UDP device was not closed within 15 s");
    send_acked(ub, db, lb, 3, "the second device once the first was closed");
    CHECK(rows_of(a) == 2 && rows_of(b) == 3, "rows %lld and %lld", rows_of(a), rows_of(b));
}

/* ---- devices_known, udp_off, udp_moved ---------------------------------------------------- */

/* Sends dg twice back-to-back from u; no reply may come. */
static void send_twice_unanswered(struct udpdev *u, const uint8_t *dg, size_t len, const char *what)
{
    CHECK(udpdev_send(u, dg, len) == 0 && udpdev_send(u, dg, len) == 0, "%s: send", what);
    expect_silence(u, QUIET_MS, what);
}

/* The drops of the refused devices' datagrams: unknown_device when it reaches want (or after
 * WAIT_MS), again a second later (a datagram counted again later would show then), and the
 * drops under every reason then, with the reasons other than unknown_device spelt out. */
struct drops {
    double first, later, all;
    char others[256];
};

static void refused_drops(double want, struct drops *d)
{
    d->first = metric_at_least(UDP_M("dropped_total"), "reason", "unknown_device", want, WAIT_MS);
    device_sleep_ms(1000);
    struct prom_text t;
    scrape(&t);
    d->later = prom_sum(&t, UDP_M("dropped_total"), "reason", "unknown_device", NULL);
    d->all = prom_sum(&t, UDP_M("dropped_total"), NULL);
    d->others[0] = '\0';
    for (size_t i = 0, o = 0; i < t.samples_len && o < sizeof d->others - 64; i++) {
        const struct prom_sample *x = &t.samples[i];
        if (strcmp(x->name, UDP_M("dropped_total")) == 0 && x->value > 0 &&
            strcmp(prom_label(x, "reason"), "unknown_device") != 0)
            o += (size_t)snprintf(d->others + o, sizeof d->others - o, " %s=%.0f (shard %s)",
                                  prom_label(x, "reason"), x->value, prom_label(x, "shard"));
    }
    prom_free(&t);
}

/* --devices known: an enabled IMEI's datagrams are served; an unknown and a disabled IMEI's
 * get no reply, each counted once, as unknown_device, and nothing of theirs is stored. */
static void test_devices_known(void **state)
{
    (void)state;
    begin("devices_known");
    const uint64_t known = IMEI_BASE + 80, disabled = IMEI_BASE + 81, unknown = IMEI_BASE + 82;
    PGconn *c = pgtest_connect(&T.gw.db);
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO public.devices (imei, name, enabled) VALUES (%" PRIu64
             ", 'known', true), (%" PRIu64 ", 'disabled', false)",
             known, disabled);
    pgtest_exec(c, sql);
    PQfinish(c);
    start((const char *const[]){"--devices", "known", NULL});
    uint64_t ts = gwproc_recent_ts_ms(&T.gw);
    uint8_t dk[2][DGRAM_BYTES], dd[DGRAM_BYTES], du[DGRAM_BYTES];
    size_t lk0 = dgram_series(known, 0x8000, 1, AVL_CODEC_8, ts, 8000, 3, dk[0], sizeof dk[0]);
    size_t lk1 =
        dgram_series(known, 0x8001, 2, AVL_CODEC_8, ts + 3000, 8010, 2, dk[1], sizeof dk[1]);
    size_t ld = dgram_series(disabled, 0x8100, 1, AVL_CODEC_8E, ts, 8100, 2, dd, sizeof dd);
    size_t lu = dgram_series(unknown, 0x8200, 1, AVL_CODEC_16, ts, 8200, 2, du, sizeof du);
    struct udpdev *k = sock(), *sd = sock(), *su = sock();
    send_acked(k, dk[0], lk0, 3, "an enabled device");
    CHECK(rows_of(known) == 3, "enabled device: %lld rows", rows_of(known));
    send_unanswered(sd, dd, ld, "a disabled device");
    send_unanswered(su, du, lu, "an unknown device");
    struct drops d1, d3;
    refused_drops(2, &d1);
    /* They re-send, as devices do, each twice at once (both copies wait for one state load):
     * refused again, each copy counted once. */
    send_twice_unanswered(sd, dd, ld, "a disabled device, twice at once");
    send_twice_unanswered(su, du, lu, "an unknown device, twice at once");
    refused_drops(6, &d3);
    CHECK(rows_of(disabled) == 0 && rows_of(unknown) == 0, "rows of refused devices");
    /* Each refused datagram counted once, as unknown_device, and under no other reason. */
    CHECK(d1.first == 2 && d1.later == 2 && d3.first == 6 && d3.later == 6 && d1.all == 2 &&
              d3.all == 6,
          "unknown_device: %.0f, a second later %.0f, after one datagram of each refused device "
          "(want 2); %.0f, a second later %.0f, after three of each (want 6). Dropped under any "
          "reason: %.0f for the 2 (besides unknown_device:%s); %.0f for the 6 (besides:%s)",
          d1.first, d1.later, d3.first, d3.later, d1.all, d1.others, d3.all, d3.others);
    send_acked(k, dk[1], lk1, 2, "the enabled device still served");
    CHECK(rows_of(known) == 5, "enabled device: %lld rows", rows_of(known));
    CHECK(metric(UDP_M("acked_total"), NULL, NULL) == 2, "ACKs");
    CHECK(metric(UDP_M("invalid_total"), NULL, NULL) == 0, "invalid");
}

/* --udp off: a valid datagram to the device port gets no reply; TCP is served as ever. */
static void test_udp_off(void **state)
{
    (void)state;
    begin("udp_off");
    start((const char *const[]){"--udp", "off", NULL});
    uint64_t imei = IMEI_BASE + 90;
    uint8_t dg[DGRAM_BYTES], tf[DGRAM_BYTES];
    size_t dl =
        dgram_series(imei, 0x9000, 1, AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw), 9000, 2, dg, 512);
    send_unanswered(sock(), dg, dl, "a valid datagram with --udp off");
    struct device d;
    gwproc_dev_open(&T.gw, &d, imei);
    size_t tl = gwproc_encode_series(AVL_CODEC_8, gwproc_recent_ts_ms(&T.gw) + 5000, 1000, 9010, 2,
                                     tf, sizeof tf);
    gwproc_send_acked(&d, tf, tl, 2, 0, 0);
    device_close(&d);
    CHECK(rows_of(imei) == 2, "%lld rows, want only the TCP packet's 2", rows_of(imei));
    struct prom_text t;
    scrape(&t);
    double received = prom_sum(&t, UDP_M("received_total"), NULL);
    prom_free(&t);
    CHECK(received == 0, "%.0f datagrams received with --udp off", received);
}

/* --udp HOST:PORT: datagrams are served there, and not on the --listen port. */
static void test_udp_moved(void **state)
{
    (void)state;
    begin("udp_moved");
    uint16_t port = device_free_port();
    char udp[32];
    snprintf(udp, sizeof udp, "127.0.0.1:%u", port);
    start((const char *const[]){"--udp", udp, NULL});
    uint64_t imei = IMEI_BASE + 95;
    uint8_t dg[DGRAM_BYTES];
    size_t dl =
        dgram_series(imei, 0x9500, 1, AVL_CODEC_8E, gwproc_recent_ts_ms(&T.gw), 9500, 2, dg, 512);
    send_unanswered(sock(), dg, dl, "a datagram to the --listen port");
    send_acked(sock_to(port), dg, dl, 2, "a datagram to the --udp port");
    CHECK(rows_of(imei) == 2, "%lld rows, want 2", rows_of(imei));
    expect_rows_of_dgram(dg, dl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_codecs, teardown),
        cmocka_unit_test_teardown(test_twice, teardown),
        cmocka_unit_test_teardown(test_ack_lost, teardown),
        cmocka_unit_test_teardown(test_nat_rebind, teardown),
        cmocka_unit_test_teardown(test_hostile, teardown),
        cmocka_unit_test_teardown(test_side_by_side, teardown),
        cmocka_unit_test_teardown(test_dormant, teardown),
        cmocka_unit_test_teardown(test_poison, teardown),
        cmocka_unit_test_teardown(test_devices_known, teardown),
        cmocka_unit_test_teardown(test_devices_full, teardown),
        cmocka_unit_test_teardown(test_commands_wait_for_tcp, teardown),
        cmocka_unit_test_teardown(test_udp_off, teardown),
        cmocka_unit_test_teardown(test_udp_moved, teardown),
        cmocka_unit_test_teardown(test_sigkill, teardown),
        cmocka_unit_test_teardown(test_burst, teardown),
    };
    /* By hand: TEST_UDP_FILTER=test_hostile (a cmocka pattern) runs matching cases only. */
    const char *filter = getenv("TEST_UDP_FILTER");
    if (filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
