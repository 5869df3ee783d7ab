/* test_roundtrip.c — seeded round trips through the codec's encoders and decoders, single-bit
 * corruption of good frames, and the encoders' refusals.
 *
 * Packets come from loadgen/packetgen in its realistic and arbitrary modes. Each one is
 * encoded, framed by avl_scan (TCP), decoded from an exactly-sized heap copy (so ASan sees any
 * over-read), compared field by field and IO element by IO element with its sources, and
 * re-encoded from the decoded form to the same bytes. The seed is fixed (AVLGATE_SEED in the
 * environment overrides it) and printed with every failure, so a failure replays exactly.
 * Single-threaded test code: allocates freely. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/avl.h"
#include "loadgen/packetgen.h"
#include "tests/support/testutil.h"

enum {
    AVL_PACKETS_MIN = 100000, /* AVL round trips across codecs, transports and modes */
    AVL_COMBOS = 3 * 2 * 2,   /* codecs x transports x modes */
    AVL_PACKETS_PER_COMBO = (AVL_PACKETS_MIN + AVL_COMBOS - 1) / AVL_COMBOS,
    GPRS_FRAMES_PER_COMBO = 1500, /* x 4 codecs x 2 modes */
    GUARD_BYTES = 32,
    CANARY = 0xA5,
};

static const uint8_t avl_codecs[3] = {AVL_CODEC_8, AVL_CODEC_8E, AVL_CODEC_16};
static const uint8_t gprs_codecs[4] = {AVL_CODEC_12, AVL_CODEC_13, AVL_CODEC_14, AVL_CODEC_15};

/* Shared scratch: large, so static. */
static struct pktgen_packet pkt;
static struct pktgen_gprs gprs;
static struct avl_record recs[AVL_RECORDS_MAX];
static struct avl_record recs2[AVL_RECORDS_MAX];
static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
static struct avl_record_src re_src[AVL_RECORDS_MAX];
static struct avl_io_elem re_io[PKTGEN_IO_MAX];
static uint8_t frame[PKTGEN_FRAME_BYTES_MAX];
static uint8_t reenc[PKTGEN_FRAME_BYTES_MAX];

static uint64_t seed_base;
static uint64_t avl_packets, avl_records, avl_io_elems, avl_tcp_packets, avl_udp_packets;
static uint64_t gprs_frames, gprs_messages, flip_frames, flip_cases;

/* What is being checked, printed with a failure. */
static struct {
    const char *what;
    uint8_t codec;
    int mode;
    unsigned iter;
    uint64_t seed;
    const uint8_t *frame;
    size_t len;
} ctx;

static void dump_context(void)
{
    print_error("context: %s codec 0x%02x mode %s iteration %u seed 0x%016" PRIx64 "\n",
                ctx.what ? ctx.what : "-", ctx.codec, ctx.mode ? "arbitrary" : "realistic",
                ctx.iter, ctx.seed);
    if (ctx.frame && ctx.len) {
        size_t n = ctx.len > 4096 ? 4096 : ctx.len;
        char *hex = malloc(2 * n + 1);
        if (hex) {
            tu_hex_encode(ctx.frame, n, hex);
            print_error("frame (%zu bytes%s): %s\n", ctx.len, n < ctx.len ? ", first 4096" : "",
                        hex);
            free(hex);
        }
    }
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            dump_context();                                                                        \
            fail_msg("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);                        \
        }                                                                                          \
    } while (0)

/* Asserts an encoder or decoder result equals want, naming both on failure. */
#define CHECK_RC(got, want)                                                                        \
    do {                                                                                           \
        int got_ = (got), want_ = (want);                                                          \
        if (got_ != want_) {                                                                       \
            dump_context();                                                                        \
            fail_msg("%s:%d: %s = %d (%s), want %d (%s)", __FILE__, __LINE__, #got, got_,          \
                     avl_strerror(got_), want_, avl_strerror(want_));                              \
        }                                                                                          \
    } while (0)

/* A named error: below AVL_NEED_MORE and known to avl_strerror. */
#define CHECK_NAMED_ERROR(rc)                                                                      \
    do {                                                                                           \
        int rc_ = (rc);                                                                            \
        if (!(rc_ < AVL_NEED_MORE && rc_ >= AVL_E_ERR_MIN &&                                       \
              strcmp(avl_strerror(rc_), "unknown_error") != 0)) {                                  \
            dump_context();                                                                        \
            fail_msg("%s:%d: %s = %d (%s), want a named error", __FILE__, __LINE__, #rc, rc_,      \
                     avl_strerror(rc_));                                                           \
        }                                                                                          \
    } while (0)

static uint64_t seed_for(unsigned stream)
{
    return seed_base ^ (UINT64_C(0x9E3779B97F4A7C15) * (stream + 1));
}

static uint8_t *heap_copy(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    if (!c)
        abort();
    memcpy(c, p, n);
    return c;
}

static uint64_t be_read(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------------------------------------
 * Comparing decoded records with their sources
 * ------------------------------------------------------------------------------------------- */

/* The iterator yields N1, N2, N4, N8, NX in turn and, inside a group, the order given. */
static void check_io(const struct avl_record_src *s, const struct avl_record *d)
{
    static const uint8_t wire_order[5] = {1, 2, 4, 8, 0};
    struct avl_io_iter it;
    struct avl_io io;
    uint32_t seen = 0;
    avl_io_iter_init(&it, d);
    for (int grp = 0; grp < 5; grp++) {
        for (uint32_t i = 0; i < s->io_len; i++) {
            const struct avl_io_elem *e = &s->io[i];
            if (e->width != wire_order[grp])
                continue;
            CHECK(avl_io_next(&it, &io));
            CHECK(io.id == e->id);
            CHECK(io.bytes >= d->io && io.bytes + io.len <= d->io + d->io_bytes);
            if (e->width == 0) {
                CHECK(io.nx);
                CHECK(io.len == e->nx_len);
                CHECK(io.value == 0);
                CHECK(e->nx_len == 0 || memcmp(io.bytes, e->nx, e->nx_len) == 0);
            } else {
                CHECK(!io.nx);
                CHECK(io.len == e->width);
                CHECK(io.value == e->value);
                CHECK(be_read(io.bytes, io.len) == e->value);
            }
            seen++;
        }
    }
    CHECK(seen == s->io_len);
    CHECK(!avl_io_next(&it, &io));
    CHECK(!avl_io_next(&it, &io)); /* stays at the end */
    avl_io_elems += seen;
}

static void check_records(const struct pktgen_packet *src, const struct avl_record *d, uint16_t n,
                          const uint8_t *buf, size_t len)
{
    CHECK(n == src->records_len);
    for (uint16_t i = 0; i < n; i++) {
        const struct avl_record_src *s = &src->recs[i];
        const struct avl_record *r = &d[i];
        CHECK(r->ts_ms == s->rec.ts_ms);
        CHECK(r->lon_e7 == s->rec.lon_e7);
        CHECK(r->lat_e7 == s->rec.lat_e7);
        CHECK(r->altitude_m == s->rec.altitude_m);
        CHECK(r->angle_deg == s->rec.angle_deg);
        CHECK(r->speed_kmh == s->rec.speed_kmh);
        CHECK(r->satellites == s->rec.satellites);
        CHECK(r->priority == s->rec.priority);
        CHECK(r->event_id == s->rec.event_id);
        CHECK(r->codec == src->codec);
        if (src->codec == AVL_CODEC_16)
            CHECK(r->generation == s->rec.generation);
        else
            CHECK(r->generation == AVL_GENERATION_NONE);
        CHECK(r->io_total == s->io_len);
        CHECK(r->io_bytes == pktgen_io_bytes(src->codec, s));
        CHECK(r->io >= buf && r->io + r->io_bytes <= buf + len);
        check_io(s, r);
    }
    avl_records += n;
}

/* Turns decoded records back into encoder sources; the IO elements point into the packet. */
static void sources_from_decoded(const struct avl_record *d, uint16_t n)
{
    size_t k = 0;
    for (uint16_t i = 0; i < n; i++) {
        struct avl_io_iter it;
        struct avl_io io;
        re_src[i].rec = d[i];
        re_src[i].io = re_io + k;
        uint16_t count = 0;
        avl_io_iter_init(&it, &d[i]);
        while (avl_io_next(&it, &io)) {
            CHECK(k < PKTGEN_IO_MAX);
            re_io[k++] = (struct avl_io_elem){
                .id = io.id,
                .width = io.nx ? 0 : (uint8_t)io.len,
                .nx_len = io.nx ? io.len : 0,
                .value = io.value,
                .nx = io.nx ? io.bytes : NULL,
            };
            count++;
        }
        re_src[i].io_len = count;
    }
}

/* ---------------------------------------------------------------------------------------------
 * AVL round trips
 * ------------------------------------------------------------------------------------------- */

static void roundtrip_tcp_one(struct pktgen *g, uint8_t codec, enum pktgen_mode mode)
{
    int n = pktgen_packet_tcp(g, mode, codec, PKTGEN_RECORDS_RANDOM, &pkt, frame, sizeof frame);
    ctx.frame = frame;
    ctx.len = n > 0 ? (size_t)n : 0;
    CHECK(n > 0);
    CHECK((uint32_t)n == pktgen_tcp_bytes(&pkt));

    /* The scanner frames it whole, and calls every strict prefix "need more". */
    struct avl_frame f;
    CHECK_RC(avl_scan(frame, (size_t)n, AVL_SCAN_DATA, 0, &f), n);
    CHECK(f.kind == AVL_FRAME_AVL && f.codec == codec && f.bytes == (uint32_t)n);
    size_t cut = (size_t)pktgen_below(g, (uint64_t)n);
    CHECK_RC(avl_scan(frame, cut, AVL_SCAN_DATA, 0, &f), AVL_NEED_MORE);
    CHECK(f.bytes > cut && f.bytes <= (uint32_t)n);
    CHECK(cut < AVL_TCP_HEADER_BYTES || f.bytes == (uint32_t)n);

    uint8_t *copy = heap_copy(frame, (size_t)n);
    struct avl_packet dp;
    memset(&dp, 0xCC, sizeof dp);
    CHECK_RC(avl_decode_tcp(copy, (size_t)n, &dp, recs), 0);
    CHECK(dp.codec == codec);
    CHECK(dp.frame_bytes == (uint32_t)n);
    CHECK(dp.udp_packet_id == 0 && dp.udp_not_usable == 0 && dp.udp_avl_packet_id == 0);
    CHECK(dp.imei == 0);
    check_records(&pkt, recs, dp.records_len, copy, (size_t)n);

    /* The body decoder alone agrees. */
    uint16_t n2 = 0xFFFF;
    CHECK_RC(avl_decode_body(copy + AVL_TCP_HEADER_BYTES, (size_t)n - AVL_TCP_OVERHEAD_BYTES, &n2,
                             recs2),
             0);
    CHECK(n2 == dp.records_len);

    sources_from_decoded(recs, dp.records_len);
    CHECK_RC(avl_encode_tcp(reenc, sizeof reenc, codec, re_src, dp.records_len), n);
    CHECK(memcmp(reenc, copy, (size_t)n) == 0);

    /* The ACK for it. */
    uint8_t ack[AVL_TCP_ACK_BYTES];
    CHECK_RC(avl_encode_tcp_ack(ack, dp.records_len), AVL_TCP_ACK_BYTES);
    CHECK(be_read(ack, 4) == dp.records_len);
    free(copy);
    avl_tcp_packets++;
}

static void roundtrip_udp_one(struct pktgen *g, uint8_t codec, enum pktgen_mode mode)
{
    int n = pktgen_packet_udp(g, mode, codec, PKTGEN_RECORDS_RANDOM, &pkt, frame, sizeof frame);
    ctx.frame = frame;
    ctx.len = n > 0 ? (size_t)n : 0;
    CHECK(n > 0);
    CHECK((uint32_t)n == pktgen_udp_bytes(&pkt, pkt.imei));

    uint8_t *copy = heap_copy(frame, (size_t)n);
    struct avl_packet dp;
    memset(&dp, 0xCC, sizeof dp);
    CHECK_RC(avl_decode_udp(copy, (size_t)n, &dp, recs), 0);
    CHECK(dp.codec == codec);
    CHECK(dp.frame_bytes == (uint32_t)n);
    CHECK(dp.udp_packet_id == pkt.udp_packet_id);
    CHECK(dp.udp_avl_packet_id == pkt.udp_avl_packet_id);
    CHECK(dp.udp_not_usable == copy[4]);
    CHECK(dp.imei == pkt.imei);
    check_records(&pkt, recs, dp.records_len, copy, (size_t)n);

    sources_from_decoded(recs, dp.records_len);
    CHECK_RC(avl_encode_udp(reenc, sizeof reenc, dp.udp_packet_id, dp.udp_avl_packet_id, dp.imei,
                            codec, re_src, dp.records_len),
             n);
    CHECK(memcmp(reenc, copy, (size_t)n) == 0);

    /* The datagram cut short or with a byte too many is refused by its length field. */
    CHECK_NAMED_ERROR(avl_decode_udp(copy, (size_t)n - 1, &dp, recs));

    uint8_t ack[AVL_UDP_ACK_BYTES];
    uint16_t ack_pid;
    uint8_t ack_avl, ack_n;
    CHECK_RC(
        avl_encode_udp_ack(ack, pkt.udp_packet_id, pkt.udp_avl_packet_id, (uint8_t)pkt.records_len),
        AVL_UDP_ACK_BYTES);
    CHECK_RC(avl_decode_udp_ack(ack, sizeof ack, &ack_pid, &ack_avl, &ack_n), 0);
    CHECK(ack_pid == pkt.udp_packet_id && ack_avl == pkt.udp_avl_packet_id &&
          ack_n == (uint8_t)pkt.records_len);
    free(copy);
    avl_udp_packets++;
}

static void test_roundtrip_avl(void **state)
{
    (void)state;
    double t0 = now_s();
    unsigned stream = 0;
    for (int transport = 0; transport < 2; transport++) {
        for (int ci = 0; ci < 3; ci++) {
            for (int mode = 0; mode < 2; mode++, stream++) {
                struct pktgen g;
                ctx.what = transport == 0 ? "avl tcp round trip" : "avl udp round trip";
                ctx.codec = avl_codecs[ci];
                ctx.mode = mode;
                ctx.seed = seed_for(stream);
                pktgen_init(&g, ctx.seed);
                for (unsigned i = 0; i < AVL_PACKETS_PER_COMBO; i++) {
                    ctx.iter = i;
                    if (transport == 0)
                        roundtrip_tcp_one(&g, avl_codecs[ci], (enum pktgen_mode)mode);
                    else
                        roundtrip_udp_one(&g, avl_codecs[ci], (enum pktgen_mode)mode);
                    avl_packets++;
                }
            }
        }
    }
    ctx.frame = NULL;
    printf("avl round trips: %" PRIu64 " packets (%" PRIu64 " tcp, %" PRIu64 " udp), %" PRIu64
           " records, %" PRIu64 " io elements, %.1f s\n",
           avl_packets, avl_tcp_packets, avl_udp_packets, avl_records, avl_io_elems, now_s() - t0);
    assert_true(avl_packets >= AVL_PACKETS_MIN);
}

/* Records at the limits the generator reaches only by chance: 255 records, an 8E record with
 * an NX element of 65535 bytes, and one whose IO groups exceed 64 KiB (a frame above the
 * default frame_bytes_max, so the scanner needs a larger limit). */
static void test_roundtrip_avl_limits(void **state)
{
    (void)state;
    static uint8_t nx_big[65535];
    static uint8_t big_frame[3 * 65536];
    struct pktgen g;
    ctx.what = "avl limits";
    ctx.mode = 1;
    ctx.seed = seed_for(100);
    pktgen_init(&g, ctx.seed);
    pktgen_fill_bytes(&g, nx_big, sizeof nx_big);

    for (int ci = 0; ci < 3; ci++) {
        uint8_t codec = avl_codecs[ci];
        ctx.codec = codec;
        /* 255 records with empty IO: the largest count, in the smallest bytes. */
        pktgen_packet_reset(&pkt, codec, PKTGEN_FRAME_BYTES_MAX);
        for (int i = 0; i < AVL_RECORDS_MAX; i++) {
            struct avl_record_src *s = &pkt.recs[i];
            memset(s, 0, sizeof *s);
            s->rec.ts_ms = i % 2 ? AVL_TS_MS_END - 1 : 0;
            s->rec.lon_e7 = i % 2 ? INT32_MIN : INT32_MAX;
            s->rec.lat_e7 = i % 2 ? INT32_MAX : INT32_MIN;
            s->rec.altitude_m = i % 2 ? INT16_MIN : -1;
            s->rec.generation = codec == AVL_CODEC_16 ? (uint8_t)i : AVL_GENERATION_NONE;
            pkt.body_bytes += pktgen_record_bytes(codec, s);
        }
        pkt.records_len = AVL_RECORDS_MAX;
        int n = avl_encode_tcp(frame, sizeof frame, codec, pkt.recs, AVL_RECORDS_MAX);
        ctx.frame = frame;
        ctx.len = n > 0 ? (size_t)n : 0;
        CHECK((uint32_t)n == pktgen_tcp_bytes(&pkt));
        struct avl_packet dp;
        CHECK_RC(avl_decode_tcp(frame, (size_t)n, &dp, recs), 0);
        check_records(&pkt, recs, dp.records_len, frame, (size_t)n);
        CHECK(frame[9] == 0xFF && frame[n - 5] == 0xFF);
    }

    /* 8E: NX of 65535 bytes plus a second NX: IO groups of 2 * 65539 + 10 bytes. */
    struct avl_io_elem io[3] = {
        {.id = 0xFFFF, .width = 0, .nx_len = 65535, .nx = nx_big},
        {.id = 0, .width = 0, .nx_len = 65535, .nx = nx_big},
        {.id = 7, .width = 8, .value = UINT64_MAX},
    };
    pktgen_packet_reset(&pkt, AVL_CODEC_8E, PKTGEN_FRAME_BYTES_MAX);
    struct avl_record_src *s = &pkt.recs[0];
    memset(s, 0, sizeof *s);
    s->rec.ts_ms = 1;
    s->rec.generation = AVL_GENERATION_NONE;
    s->io = io;
    s->io_len = 3;
    pkt.records_len = 1;
    pkt.body_bytes += pktgen_record_bytes(AVL_CODEC_8E, s);
    ctx.codec = AVL_CODEC_8E;
    int n = avl_encode_tcp(big_frame, sizeof big_frame, AVL_CODEC_8E, pkt.recs, 1);
    ctx.frame = big_frame;
    ctx.len = n > 0 ? (size_t)n : 0;
    CHECK((uint32_t)n == pktgen_tcp_bytes(&pkt));
    struct avl_frame f;
    CHECK_RC(avl_scan(big_frame, (size_t)n, AVL_SCAN_DATA, 0, &f), AVL_E_FRAME_TOO_LARGE);
    CHECK_RC(avl_scan(big_frame, (size_t)n, AVL_SCAN_DATA, (uint32_t)n, &f), n);
    CHECK_RC(avl_scan(big_frame, (size_t)n, AVL_SCAN_DATA, (uint32_t)n - 1, &f),
             AVL_E_FRAME_TOO_LARGE);
    uint8_t *copy = heap_copy(big_frame, (size_t)n);
    struct avl_packet dp;
    CHECK_RC(avl_decode_tcp(copy, (size_t)n, &dp, recs), 0);
    check_records(&pkt, recs, dp.records_len, copy, (size_t)n);
    sources_from_decoded(recs, 1);
    CHECK_RC(avl_encode_tcp(big_frame, sizeof big_frame, AVL_CODEC_8E, re_src, 1), n);
    CHECK(memcmp(big_frame, copy, (size_t)n) == 0);
    free(copy);
    ctx.frame = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * GPRS round trips
 * ------------------------------------------------------------------------------------------- */

static void check_gprs_decoded(const struct pktgen_gprs *src, const struct avl_gprs_msg *d,
                               int count, uint8_t codec, const uint8_t *buf, size_t len)
{
    static const uint32_t fixed[4] = {0, 4, 8, 12}; /* codecs 12..15 */
    uint32_t fx = fixed[codec - AVL_CODEC_12];
    CHECK(count == src->msgs_len);
    CHECK(codec == src->codec);
    for (int i = 0; i < count; i++) {
        const struct avl_gprs_msg *s = &src->msgs[i], *m = &d[i];
        CHECK(m->type == s->type);
        CHECK(m->size == fx + s->text_len);
        CHECK(m->payload >= buf && m->payload + m->size <= buf + len);
        CHECK(m->ts_s == s->ts_s);
        CHECK(m->imei == s->imei);
        CHECK(m->text == m->payload + fx);
        CHECK(m->text_len == s->text_len);
        CHECK(s->text_len == 0 || memcmp(m->text, s->text, s->text_len) == 0);
    }
    gprs_messages += (uint64_t)count;
}

static void roundtrip_gprs_one(struct pktgen *g, uint8_t codec, enum pktgen_mode mode)
{
    uint32_t budget = mode == PKTGEN_REALISTIC ? 4096 : (uint32_t)(300 + pktgen_below(g, 16384));
    pktgen_gprs_fill(g, mode, codec, budget, &gprs);
    int n = avl_encode_gprs(frame, sizeof frame, codec, gprs.msgs, gprs.msgs_len);
    ctx.frame = frame;
    ctx.len = n > 0 ? (size_t)n : 0;
    CHECK(n > 0);
    CHECK((uint32_t)n == pktgen_gprs_bytes(&gprs));
    CHECK((uint32_t)n <= budget);

    struct avl_frame f;
    CHECK_RC(avl_scan(frame, (size_t)n, AVL_SCAN_DATA, 0, &f), n);
    CHECK(f.kind == AVL_FRAME_GPRS && f.codec == codec && f.bytes == (uint32_t)n);

    uint8_t *copy = heap_copy(frame, (size_t)n);
    uint8_t dcodec = 0;
    int count = avl_decode_gprs(copy, (size_t)n, &dcodec, msgs);
    CHECK_RC(count, gprs.msgs_len);
    check_gprs_decoded(&gprs, msgs, count, dcodec, copy, (size_t)n);
    CHECK_RC(avl_encode_gprs(reenc, sizeof reenc, codec, msgs, (size_t)count), n);
    CHECK(memcmp(reenc, copy, (size_t)n) == 0);

    /* An AVL decoder refuses the frame by kind, and the reverse. */
    struct avl_packet dp;
    CHECK_RC(avl_decode_tcp(copy, (size_t)n, &dp, recs), AVL_E_NOT_AVL);
    free(copy);

    /* A Codec 12 command is one type 0x05 message. */
    if (codec == AVL_CODEC_12 && count == 1 && msgs[0].type == AVL_GPRS_COMMAND) {
        CHECK_RC(avl_encode_command(reenc, sizeof reenc, gprs.msgs[0].text, gprs.msgs[0].text_len),
                 n);
        CHECK(memcmp(reenc, frame, (size_t)n) == 0);
    }
    gprs_frames++;
}

static void test_roundtrip_gprs(void **state)
{
    (void)state;
    double t0 = now_s();
    unsigned stream = 200;
    for (int ci = 0; ci < 4; ci++) {
        for (int mode = 0; mode < 2; mode++, stream++) {
            struct pktgen g;
            ctx.what = "gprs round trip";
            ctx.codec = gprs_codecs[ci];
            ctx.mode = mode;
            ctx.seed = seed_for(stream);
            pktgen_init(&g, ctx.seed);
            for (unsigned i = 0; i < GPRS_FRAMES_PER_COMBO; i++) {
                ctx.iter = i;
                roundtrip_gprs_one(&g, gprs_codecs[ci], (enum pktgen_mode)mode);
            }
        }
    }

    /* Commands with random text, binary bytes included. */
    struct pktgen g;
    ctx.what = "codec 12 command";
    ctx.codec = AVL_CODEC_12;
    ctx.seed = seed_for(stream);
    pktgen_init(&g, ctx.seed);
    uint8_t text[600];
    for (unsigned i = 0; i < 2000; i++) {
        ctx.iter = i;
        uint32_t len = (uint32_t)pktgen_below(&g, sizeof text + 1);
        pktgen_fill_bytes(&g, text, len);
        int n = avl_encode_command(frame, sizeof frame, len ? text : NULL, len);
        ctx.frame = frame;
        ctx.len = n > 0 ? (size_t)n : 0;
        CHECK_RC(n, (int)(len + 8 + AVL_TCP_OVERHEAD_BYTES));
        uint8_t *copy = heap_copy(frame, (size_t)n);
        uint8_t codec;
        CHECK_RC(avl_decode_gprs(copy, (size_t)n, &codec, msgs), 1);
        CHECK(codec == AVL_CODEC_12 && msgs[0].type == AVL_GPRS_COMMAND);
        CHECK(msgs[0].text_len == len && (len == 0 || memcmp(msgs[0].text, text, len) == 0));
        free(copy);
        gprs_frames++;
    }
    ctx.frame = NULL;
    printf("gprs round trips: %" PRIu64 " frames, %" PRIu64 " messages, %.1f s\n", gprs_frames,
           gprs_messages, now_s() - t0);
}

/* The handshake: every IMEI of 1..17 digits; 15 digits at least on the wire. */
static void test_roundtrip_imei(void **state)
{
    (void)state;
    struct pktgen g;
    ctx.what = "imei handshake";
    ctx.seed = seed_for(300);
    pktgen_init(&g, ctx.seed);
    for (unsigned i = 0; i < 20000; i++) {
        ctx.iter = i;
        uint64_t limit = 1;
        for (unsigned d = (unsigned)(1 + pktgen_below(&g, AVL_IMEI_DIGITS_MAX)); d > 0; d--)
            limit *= 10;
        uint64_t imei = i % 7 == 0 ? limit - 1 : pktgen_below(&g, limit);
        uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
        int n = avl_encode_imei(hs, sizeof hs, imei);
        ctx.frame = hs;
        ctx.len = n > 0 ? (size_t)n : 0;
        char digits[AVL_IMEI_DIGITS_MAX + 1];
        int nd = avl_imei_format(imei, digits);
        CHECK_RC(n, 2 + nd);
        CHECK(nd >= AVL_IMEI_CANONICAL_DIGITS && memcmp(hs + 2, digits, (size_t)nd) == 0);
        struct avl_frame f;
        CHECK_RC(avl_scan(hs, (size_t)n, AVL_SCAN_HANDSHAKE, 0, &f), n);
        CHECK(f.kind == AVL_FRAME_IMEI);
        CHECK_RC(avl_scan(hs, (size_t)n, AVL_SCAN_ANY, 0, &f), n);
        CHECK(f.kind == AVL_FRAME_IMEI);
        uint8_t *copy = heap_copy(hs, (size_t)n);
        uint64_t back = ~imei;
        CHECK_RC(avl_decode_imei(copy, (size_t)n, &back), 0);
        CHECK(back == imei);
        free(copy);
    }
    ctx.frame = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Single-bit corruption of good frames
 * ------------------------------------------------------------------------------------------- */

/* One flipped frame: the preamble gives bad_preamble; the length may give need_more, an error,
 * or a shorter frame that must then fail to decode; anything inside the CRC-covered data or
 * the CRC field must give a named error from the scanner or the decoder. */
static void check_flipped(const uint8_t *buf, size_t n, size_t byte)
{
    struct avl_frame f;
    int s = avl_scan(buf, n, AVL_SCAN_DATA, 0, &f);
    flip_cases++;
    if (byte < 4) {
        CHECK_RC(s, AVL_E_BAD_PREAMBLE);
        return;
    }
    if (s == AVL_NEED_MORE) {
        CHECK(byte < AVL_TCP_HEADER_BYTES);
        CHECK(f.bytes > n);
        return;
    }
    if (s < 0) {
        CHECK_NAMED_ERROR(s);
        return;
    }
    CHECK((size_t)s <= n);
    if (byte >= AVL_TCP_HEADER_BYTES)
        CHECK((size_t)s == n);
    int r;
    if (f.kind == AVL_FRAME_AVL) {
        struct avl_packet dp;
        r = avl_decode_tcp(buf, (size_t)s, &dp, recs);
    } else {
        uint8_t codec;
        CHECK(f.kind == AVL_FRAME_GPRS);
        r = avl_decode_gprs(buf, (size_t)s, &codec, msgs);
    }
    CHECK_NAMED_ERROR(r);
}

static void flip_every_bit(const uint8_t *good, size_t n)
{
    uint8_t *buf = heap_copy(good, n);
    ctx.frame = buf;
    ctx.len = n;
    for (size_t byte = 0; byte < n; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            buf[byte] ^= (uint8_t)(1u << bit);
            check_flipped(buf, n, byte);
            buf[byte] ^= (uint8_t)(1u << bit);
        }
    }
    CHECK(memcmp(buf, good, n) == 0);
    free(buf);
    ctx.frame = NULL;
    flip_frames++;
}

static void test_bit_flips(void **state)
{
    (void)state;
    double t0 = now_s();
    unsigned stream = 400;
    for (int ci = 0; ci < 3; ci++, stream++) {
        struct pktgen g;
        ctx.what = "bit flips avl";
        ctx.codec = avl_codecs[ci];
        ctx.seed = seed_for(stream);
        pktgen_init(&g, ctx.seed);
        for (unsigned i = 0; i < 60; i++) {
            ctx.iter = i;
            /* Realistic packets of 1..3 records, then small arbitrary ones. */
            bool real = i < 40;
            ctx.mode = real ? 0 : 1;
            int n = real ? pktgen_packet_tcp(&g, PKTGEN_REALISTIC, avl_codecs[ci],
                                             (unsigned)(1 + pktgen_below(&g, 3)), &pkt, frame,
                                             sizeof frame)
                         : pktgen_packet_tcp(&g, PKTGEN_ARBITRARY, avl_codecs[ci],
                                             PKTGEN_RECORDS_RANDOM, &pkt, frame, 400);
            CHECK(n > 0);
            flip_every_bit(frame, (size_t)n);
        }
    }
    for (int ci = 0; ci < 4; ci++, stream++) {
        struct pktgen g;
        ctx.what = "bit flips gprs";
        ctx.codec = gprs_codecs[ci];
        ctx.seed = seed_for(stream);
        pktgen_init(&g, ctx.seed);
        for (unsigned i = 0; i < 30; i++) {
            ctx.iter = i;
            ctx.mode = i < 15 ? 0 : 1;
            pktgen_gprs_fill(&g, i < 15 ? PKTGEN_REALISTIC : PKTGEN_ARBITRARY, gprs_codecs[ci], 400,
                             &gprs);
            int n = avl_encode_gprs(frame, sizeof frame, gprs_codecs[ci], gprs.msgs, gprs.msgs_len);
            CHECK(n > 0);
            flip_every_bit(frame, (size_t)n);
        }
    }
    printf("bit flips: %" PRIu64 " frames, %" PRIu64 " flipped frames checked, %.1f s\n",
           flip_frames, flip_cases, now_s() - t0);
}

/* ---------------------------------------------------------------------------------------------
 * Encoder refusals
 * ------------------------------------------------------------------------------------------- */

static void one_record(struct avl_record_src *s, const struct avl_io_elem *io, uint16_t io_len)
{
    memset(s, 0, sizeof *s);
    s->rec.ts_ms = UINT64_C(1560161086000);
    s->rec.priority = 1;
    s->rec.generation = AVL_GENERATION_NONE;
    s->io = io;
    s->io_len = io_len;
}

static void test_encode_range(void **state)
{
    (void)state;
    static struct avl_record_src many[AVL_RECORDS_MAX + 1];
    static struct avl_io_elem ios[300];
    static const uint8_t vin[17] = "WV1ZZZ2EZ86015388";
    struct avl_record_src s;
    uint8_t *out = frame;
    size_t cap = sizeof frame;
    ctx.what = "encode range";
    ctx.codec = 0;
    ctx.mode = 0;
    ctx.iter = 0;
    ctx.seed = seed_base;
    ctx.frame = NULL;

    const struct avl_io_elem id300 = {.id = 300, .width = 1, .value = 1};
    const struct avl_io_elem nx = {.id = 256, .width = 0, .nx_len = 17, .nx = vin};
    const struct avl_io_elem nx_null = {.id = 256, .width = 0, .nx_len = 17, .nx = NULL};
    const struct avl_io_elem wide = {.id = 1, .width = 1, .value = 256};
    const struct avl_io_elem w3 = {.id = 1, .width = 3, .value = 1};

    /* Codec 8: ids and the event id are one byte; no NX group. */
    one_record(&s, &id300, 1);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8, &s, 1), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_udp(out, cap, 1, 1, 1, AVL_CODEC_8, &s, 1), AVL_E_ENCODE_RANGE);
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1) > 0);
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_16, &s, 1) > 0);
    one_record(&s, NULL, 0);
    s.rec.event_id = 300;
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8, &s, 1), AVL_E_ENCODE_RANGE);
    one_record(&s, &nx, 1);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8, &s, 1), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_16, &s, 1), AVL_E_ENCODE_RANGE);
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1) > 0);
    one_record(&s, &nx_null, 1);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1), AVL_E_ENCODE_RANGE);
    /* A value wider than its width, or a width that is no group. */
    one_record(&s, &wide, 1);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8, &s, 1), AVL_E_ENCODE_RANGE);
    one_record(&s, &w3, 1);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1), AVL_E_ENCODE_RANGE);

    /* Elements without an array. */
    one_record(&s, NULL, 1);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1), AVL_E_ENCODE_RANGE);

    /* A UDP datagram's length field is a u16: at most 65537 bytes in all. An 8E record with
     * an NX element of 65535 bytes makes a TCP frame but no datagram. */
    static uint8_t nx_big[65535];
    const struct avl_io_elem big = {.id = 1, .width = 0, .nx_len = 65535, .nx = nx_big};
    static uint8_t big_out[70000];
    one_record(&s, &big, 1);
    CHECK(avl_encode_tcp(big_out, sizeof big_out, AVL_CODEC_8E, &s, 1) > 65536);
    CHECK_RC(avl_encode_udp(big_out, sizeof big_out, 1, 1, 1, AVL_CODEC_8E, &s, 1),
             AVL_E_ENCODE_RANGE);

    /* Group counts and N_total are u8 for 8 and 16, u16 for 8E. */
    for (int i = 0; i < 300; i++)
        ios[i] = (struct avl_io_elem){.id = (uint16_t)(i & 0xFF), .width = 1, .value = 1};
    for (int k = 0; k < 2; k++) {
        uint8_t codec = k == 0 ? AVL_CODEC_8 : AVL_CODEC_16;
        one_record(&s, ios, 255);
        CHECK(avl_encode_tcp(out, cap, codec, &s, 1) > 0);
        one_record(&s, ios, 256);
        CHECK_RC(avl_encode_tcp(out, cap, codec, &s, 1), AVL_E_ENCODE_RANGE);
        /* 128 + 128 in two groups: each count fits, N_total does not. */
        for (int i = 128; i < 256; i++)
            ios[i].width = 2;
        CHECK_RC(avl_encode_tcp(out, cap, codec, &s, 1), AVL_E_ENCODE_RANGE);
        for (int i = 128; i < 256; i++)
            ios[i].width = 1;
    }
    one_record(&s, ios, 300);
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1) > 0);

    /* Records: at most 255. */
    for (int i = 0; i <= AVL_RECORDS_MAX; i++)
        one_record(&many[i], NULL, 0);
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_8, many, AVL_RECORDS_MAX) > 0);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8, many, AVL_RECORDS_MAX + 1), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_udp(out, cap, 1, 1, 1, AVL_CODEC_8, many, AVL_RECORDS_MAX + 1),
             AVL_E_ENCODE_RANGE);

    /* Timestamps: AVL_TS_MS_END - 1 is the last one. */
    one_record(&s, NULL, 0);
    s.rec.ts_ms = AVL_TS_MS_END - 1;
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1) > 0);
    s.rec.ts_ms = AVL_TS_MS_END;
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_8E, &s, 1), AVL_E_ENCODE_RANGE);
    s.rec.ts_ms = UINT64_MAX;
    CHECK_RC(avl_encode_udp(out, cap, 1, 1, 1, AVL_CODEC_16, &s, 1), AVL_E_ENCODE_RANGE);

    /* rec.generation is written for Codec 16 only: elsewhere it changes nothing. */
    for (int k = 0; k < 2; k++) {
        uint8_t codec = k == 0 ? AVL_CODEC_8 : AVL_CODEC_8E;
        uint8_t with[128], without[128];
        one_record(&s, &nx, codec == AVL_CODEC_8E ? 1 : 0);
        s.rec.generation = 5;
        int n1 = avl_encode_tcp(with, sizeof with, codec, &s, 1);
        s.rec.generation = AVL_GENERATION_NONE;
        int n2 = avl_encode_tcp(without, sizeof without, codec, &s, 1);
        CHECK(n1 > 0 && n1 == n2 && memcmp(with, without, (size_t)n1) == 0);
    }
    one_record(&s, NULL, 0);
    s.rec.generation = 5;
    CHECK(avl_encode_tcp(out, cap, AVL_CODEC_16, &s, 1) > 0);
    CHECK(out[AVL_TCP_HEADER_BYTES + 2 + 24 + 2] == 5);

    /* Codecs: AVL encoders take 8, 8E, 16 only; GPRS encoders 12..15 only. */
    one_record(&s, NULL, 0);
    CHECK_RC(avl_encode_tcp(out, cap, 0x07, &s, 1), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_tcp(out, cap, AVL_CODEC_12, &s, 1), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_udp(out, cap, 1, 1, 1, 0x00, &s, 1), AVL_E_ENCODE_RANGE);
    struct avl_gprs_msg m = {.type = AVL_GPRS_COMMAND, .text = vin, .text_len = 7};
    CHECK_RC(avl_encode_gprs(out, cap, AVL_CODEC_8, &m, 1), AVL_E_ENCODE_RANGE);

    /* IMEIs: 17 digits at most; 16 BCD digits in Codecs 14 and 15. */
    CHECK(avl_encode_imei(out, cap, UINT64_C(99999999999999999)) == 19);
    CHECK_RC(avl_encode_imei(out, cap, UINT64_C(100000000000000000)), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_udp(out, cap, 1, 1, UINT64_C(100000000000000000), AVL_CODEC_8, &s, 1),
             AVL_E_ENCODE_RANGE);
    m.imei = UINT64_C(9999999999999999);
    CHECK(avl_encode_gprs(out, cap, AVL_CODEC_14, &m, 1) > 0);
    m.imei = UINT64_C(10000000000000000);
    CHECK_RC(avl_encode_gprs(out, cap, AVL_CODEC_14, &m, 1), AVL_E_ENCODE_RANGE);
    m.type = AVL_GPRS_FORWARD;
    CHECK_RC(avl_encode_gprs(out, cap, AVL_CODEC_15, &m, 1), AVL_E_ENCODE_RANGE);

    /* Message types by codec; text without a pointer. */
    static const struct {
        uint8_t codec, type;
        bool ok;
    } types[] = {
        {AVL_CODEC_12, AVL_GPRS_COMMAND, true},  {AVL_CODEC_12, AVL_GPRS_RESPONSE, true},
        {AVL_CODEC_12, AVL_GPRS_CAMERA, true},   {AVL_CODEC_12, AVL_GPRS_FORWARD, false},
        {AVL_CODEC_12, AVL_GPRS_NACK, false},    {AVL_CODEC_13, AVL_GPRS_RESPONSE, true},
        {AVL_CODEC_13, AVL_GPRS_NACK, false},    {AVL_CODEC_14, AVL_GPRS_NACK, true},
        {AVL_CODEC_14, AVL_GPRS_CAMERA, false},  {AVL_CODEC_15, AVL_GPRS_FORWARD, true},
        {AVL_CODEC_15, AVL_GPRS_COMMAND, false}, {AVL_CODEC_12, 0x00, false},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        struct avl_gprs_msg t = {.type = types[i].type, .text = vin, .text_len = 3, .imei = 1};
        int r = avl_encode_gprs(out, cap, types[i].codec, &t, 1);
        if (types[i].ok)
            CHECK(r > 0);
        else
            CHECK_RC(r, AVL_E_ENCODE_RANGE);
    }
    struct avl_gprs_msg nt = {.type = AVL_GPRS_COMMAND, .text = NULL, .text_len = 3};
    CHECK_RC(avl_encode_gprs(out, cap, AVL_CODEC_12, &nt, 1), AVL_E_ENCODE_RANGE);
    CHECK_RC(avl_encode_command(out, cap, NULL, 3), AVL_E_ENCODE_RANGE);
}

/* Every capacity below the needed one gives no_space and writes nothing at or past cap. The
 * buffer is exactly cap + GUARD_BYTES on the heap, so ASan also catches a far write. */
struct enc_case {
    int kind; /* 0 tcp, 1 udp, 2 gprs, 3 command, 4 imei */
    uint8_t codec;
    const struct pktgen_packet *pkt;
    const struct pktgen_gprs *gp;
    uint64_t imei;
};

static int enc_run(const struct enc_case *c, uint8_t *out, size_t cap)
{
    switch (c->kind) {
    case 0:
        return avl_encode_tcp(out, cap, c->codec, c->pkt->recs, c->pkt->records_len);
    case 1:
        return avl_encode_udp(out, cap, c->pkt->udp_packet_id, c->pkt->udp_avl_packet_id,
                              c->pkt->imei, c->codec, c->pkt->recs, c->pkt->records_len);
    case 2:
        return avl_encode_gprs(out, cap, c->codec, c->gp->msgs, c->gp->msgs_len);
    case 3:
        return avl_encode_command(out, cap, c->gp->text, c->gp->text_len);
    default:
        return avl_encode_imei(out, cap, c->imei);
    }
}

static void check_no_space(const struct enc_case *c)
{
    int need = enc_run(c, reenc, sizeof reenc);
    CHECK(need > 0);
    for (size_t cap = 0; cap <= (size_t)need; cap++) {
        uint8_t *b = malloc(cap + GUARD_BYTES);
        if (!b)
            abort();
        memset(b, CANARY, cap + GUARD_BYTES);
        int r = enc_run(c, b, cap);
        if (cap < (size_t)need) {
            CHECK_RC(r, AVL_E_NO_SPACE);
        } else {
            CHECK_RC(r, need);
            CHECK(memcmp(b, reenc, (size_t)need) == 0);
        }
        for (size_t i = cap; i < cap + GUARD_BYTES; i++)
            CHECK(b[i] == CANARY);
        free(b);
    }
}

static void test_encode_no_space(void **state)
{
    (void)state;
    struct pktgen g;
    ctx.what = "encode no_space";
    ctx.frame = NULL;
    ctx.seed = seed_for(500);
    pktgen_init(&g, ctx.seed);
    for (int ci = 0; ci < 3; ci++) {
        ctx.codec = avl_codecs[ci];
        for (int i = 0; i < 6; i++) {
            ctx.iter = (unsigned)i;
            enum pktgen_mode mode = i % 2 ? PKTGEN_ARBITRARY : PKTGEN_REALISTIC;
            ctx.mode = (int)mode;
            unsigned records = i < 2 ? 0 : PKTGEN_RECORDS_RANDOM; /* 0 records: 15 bytes */
            int n = pktgen_packet_tcp(&g, mode, avl_codecs[ci], records, &pkt, frame, 3000);
            CHECK(n > 0);
            struct enc_case c = {.kind = 0, .codec = avl_codecs[ci], .pkt = &pkt};
            check_no_space(&c);
            n = pktgen_packet_udp(&g, mode, avl_codecs[ci], records, &pkt, frame, 3000);
            CHECK(n > 0);
            c.kind = 1;
            check_no_space(&c);
        }
    }
    for (int ci = 0; ci < 4; ci++) {
        ctx.codec = gprs_codecs[ci];
        for (int i = 0; i < 4; i++) {
            ctx.iter = (unsigned)i;
            pktgen_gprs_fill(&g, i % 2 ? PKTGEN_ARBITRARY : PKTGEN_REALISTIC, gprs_codecs[ci], 2000,
                             &gprs);
            struct enc_case c = {.kind = 2, .codec = gprs_codecs[ci], .gp = &gprs};
            check_no_space(&c);
            if (gprs_codecs[ci] == AVL_CODEC_12) {
                c.kind = 3;
                check_no_space(&c);
            }
        }
    }
    static const uint64_t imeis[] = {0, 356307042441013, UINT64_C(99999999999999999)};
    for (size_t i = 0; i < sizeof imeis / sizeof imeis[0]; i++) {
        struct enc_case c = {.kind = 4, .imei = imeis[i]};
        check_no_space(&c);
    }
}

/* The generator is deterministic: the same seed gives the same bytes. */
static void test_packetgen_deterministic(void **state)
{
    (void)state;
    static uint8_t a[8192], b[8192];
    struct pktgen g1, g2;
    pktgen_init(&g1, 42);
    pktgen_init(&g2, 42);
    for (int i = 0; i < 200; i++) {
        uint8_t codec = avl_codecs[i % 3];
        enum pktgen_mode mode = (enum pktgen_mode)(i / 3 % 2);
        int n1 = pktgen_packet_tcp(&g1, mode, codec, PKTGEN_RECORDS_RANDOM, &pkt, a, sizeof a);
        int n2 = pktgen_packet_tcp(&g2, mode, codec, PKTGEN_RECORDS_RANDOM, &pkt, b, sizeof b);
        assert_true(n1 > 0);
        assert_int_equal(n1, n2);
        assert_memory_equal(a, b, (size_t)n1);
    }
    /* Realistic 8E packets of 10 records: about the size the corpus shows for 4..14 records. */
    size_t total = 0;
    for (int i = 0; i < 100; i++) {
        int n = pktgen_packet_tcp(&g1, PKTGEN_REALISTIC, AVL_CODEC_8E, 10, &pkt, a, sizeof a);
        assert_true(n > 0);
        assert_int_equal(pkt.records_len, 10);
        total += (size_t)n;
    }
    printf("realistic 8E, 10 records: %zu bytes per packet on average\n", total / 100);
}

static void test_counts(void **state)
{
    (void)state;
    printf("round-trip totals: %" PRIu64 " AVL packets, %" PRIu64 " records, %" PRIu64
           " IO elements; %" PRIu64 " GPRS frames; %" PRIu64 " bit-flipped frames\n",
           avl_packets, avl_records, avl_io_elems, gprs_frames, flip_cases);
    assert_true(avl_packets >= AVL_PACKETS_MIN);
}

int main(void)
{
    const char *env = getenv("AVLGATE_SEED");
    seed_base = env ? strtoull(env, NULL, 0) : UINT64_C(0x5EED0A17C0DEC000);
    printf("test_roundtrip: seed 0x%016" PRIx64 "\n", seed_base);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packetgen_deterministic),
        cmocka_unit_test(test_roundtrip_avl),
        cmocka_unit_test(test_roundtrip_avl_limits),
        cmocka_unit_test(test_roundtrip_gprs),
        cmocka_unit_test(test_roundtrip_imei),
        cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_encode_range),
        cmocka_unit_test(test_encode_no_space),
        cmocka_unit_test(test_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
