/* test_scan.c — the TCP frame scanner (avl_scan) and the edges around it: every strict prefix
 * of a good frame says "need more", byte-at-a-time feeding gives the same frames as one shot,
 * frames and prefixes that end right before an unreadable page never fault, scan modes, length
 * bounds, early errors, error names, timestamp range and IMEI helpers.
 *
 * The good frames are the public examples of ../shared/protocol/TELTONIKA.md §9 (wiki and
 * official PDFs), embedded as hex so a failure names its input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "codec/avl.h"
#include "tests/support/testutil.h"

/* ---------------------------------------------------------------------------------------------
 * Good frames
 * ------------------------------------------------------------------------------------------- */

struct good_frame {
    const char *name;
    const char *hex;
    enum avl_scan_mode mode; /* the connection state the frame arrives in */
    enum avl_frame_kind kind;
    uint8_t codec;   /* AVL and GPRS frames */
    int gprs_msgs;   /* GPRS frames: messages in the frame */
    int avl_records; /* AVL frames: records in the frame */
    uint64_t imei;   /* handshakes */
};

static const struct good_frame good_frames[] = {
    {"ping", "ff", AVL_SCAN_HANDSHAKE, AVL_FRAME_PING, 0, 0, 0, 0},
    {"handshake 356307042441013", "000f333536333037303432343431303133", AVL_SCAN_HANDSHAKE,
     AVL_FRAME_IMEI, 0, 0, 0, 356307042441013u},
    {"handshake 1 digit", "000135", AVL_SCAN_HANDSHAKE, AVL_FRAME_IMEI, 0, 0, 0, 5},
    {"handshake 17 digits", "00113132333435363738393031323334353637", AVL_SCAN_HANDSHAKE,
     AVL_FRAME_IMEI, 0, 0, 0, 12345678901234567u},
    {"wiki codec 8 ex.1",
     "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101425e"
     "0f01f10000601a014e0000000000000000010000c7cf",
     AVL_SCAN_DATA, AVL_FRAME_AVL, AVL_CODEC_8, 0, 1, 0},
    {"wiki codec 8 ex.3",
     "000000000000004308020000016b40d57b48010000000000000000000000000000000101010100000000000001"
     "6b40d5c198010000000000000000000000000000000101010101000000020000252c",
     AVL_SCAN_DATA, AVL_FRAME_AVL, AVL_CODEC_8, 0, 2, 0},
    {"wiki codec 8E",
     "000000000000004a8e010000016b412cee000100000000000000000000000000000000010005000100010100"
     "010011001d00010010015e2c880002000b000000003544c87a000e000000001dd7e06a00000100002994",
     AVL_SCAN_DATA, AVL_FRAME_AVL, AVL_CODEC_8E, 0, 1, 0},
    {"wiki codec 16",
     "000000000000005f10020000016bdbc7833000000000000000000000000000000000000b05040200010000030002"
     "000b00270042563a00000000016bdbc7871800000000000000000000000000000000000b050402000100000300"
     "02000b00260042563a00000200005fb3",
     AVL_SCAN_DATA, AVL_FRAME_AVL, AVL_CODEC_16, 0, 2, 0},
    {"fm64 pdf codec 8E with NX",
     "000000000000005f8e010000015fba40b620000f0dcde420959d30008a000006000000000006000100ef000001"
     "0011001e000100100000cbdf0002000b000000003544c875000e0000000029bfe4d1000101000011000000000000"
     "0000000000000000000000010000d153",
     AVL_SCAN_DATA, AVL_FRAME_AVL, AVL_CODEC_8E, 0, 1, 0},
    {"codec 8E negative longitude",
     "00000000000000628e010000017a52dc444800c42dd67b0c443bce000000000000000000000c000500f00100"
     "150200c800004502007143000500b5000000b600000018000000430f1d00440000000100f1000518c4000000"
     "01037b000c44444245353930444442353801000001f2",
     AVL_SCAN_DATA, AVL_FRAME_AVL, AVL_CODEC_8E, 0, 1, 0},
    {"empty codec 8E (uro)", "00000000000000038e000000002b60", AVL_SCAN_DATA, AVL_FRAME_AVL,
     AVL_CODEC_8E, 0, 0, 0},
    {"codec 12 getinfo command", "000000000000000f0c010500000007676574696e666f0100004312",
     AVL_SCAN_DATA, AVL_FRAME_GPRS, AVL_CODEC_12, 1, 0, 0},
    {"codec 12 getio response",
     "00000000000000370c01060000002f4449313a31204449323a30204449333a302041494e313a302041494e323a"
     "313639323420444f313a3020444f323a3101000066e3",
     AVL_SCAN_DATA, AVL_FRAME_GPRS, AVL_CODEC_12, 1, 0, 0},
    {"codec 13 4-byte timestamp", "00000000000000130d01060000000b0a81c320676574696e666f0100001d6b",
     AVL_SCAN_DATA, AVL_FRAME_GPRS, AVL_CODEC_13, 1, 0, 0},
    {"codec 14 getver command",
     "00000000000000160e01050000000e0352093081452251676574766572010000d2c1", AVL_SCAN_DATA,
     AVL_FRAME_GPRS, AVL_CODEC_14, 1, 0, 0},
    {"codec 15 hello",
     "000000000000001b0f010b00000013654b65a4012345678912345648656c6c6f210a01000093d6",
     AVL_SCAN_DATA, AVL_FRAME_GPRS, AVL_CODEC_15, 1, 0, 0},
};

enum { GOOD_FRAMES_LEN = sizeof good_frames / sizeof good_frames[0] };

/* UDP datagrams (§9.6-9.8): not scanned (UDP has no stream), decoded at a page edge. */
static const char *const udp_datagrams[] = {
    "003dcafe0105000f33353230393330383634303336353508010000016b4f815b300100000000000000000000000000"
    "00000103021503010101425dbc000001",
    "005fcafe0107000f3335323039333038363430333635358e010000016b4f831c6801000000000000000000000000"
    "00000000010005000100010100010011009d00010010015e2c880002000b000000003544c87a000e000000001dd7"
    "e06a000001",
    "0048cafe0101000f33353230393430383532333135393210010000015117e40fe8000000000000000000000000000"
    "0000000ef05050400010000030000b40000ef01010042111a000001",
};

static uint8_t *hex_alloc(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    uint8_t *out = malloc(n / 2 + 1);
    long got = tu_hex_decode(hex, n, out, n / 2 + 1);
    if (got < 0)
        fail_msg("bad hex in the test table: %.40s", hex);
    *len = (size_t)got;
    return out;
}

/* ---------------------------------------------------------------------------------------------
 * A buffer whose end is followed by an unreadable page, so any read past it faults.
 * ------------------------------------------------------------------------------------------- */

struct guard {
    uint8_t *base;
    size_t page;
};

static void guard_init(struct guard *g)
{
    g->page = (size_t)sysconf(_SC_PAGESIZE);
    void *m = mmap(NULL, 2 * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    g->base = m;
    assert_int_equal(mprotect(g->base + g->page, g->page, PROT_NONE), 0);
}

static void guard_free(struct guard *g)
{
    munmap(g->base, 2 * g->page);
}

/* Copies n bytes so that they end exactly at the unreadable page; returns where they start. */
static const uint8_t *guard_place(struct guard *g, const uint8_t *src, size_t n)
{
    assert_true(n <= g->page);
    uint8_t *dst = g->base + g->page - n;
    memcpy(dst, src, n);
    return dst;
}

/* Runs the decoder that fits the frame kind. Returns its result (0 or a count on success). */
static int decode_frame(const struct avl_frame *f, const uint8_t *p, size_t len)
{
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    struct avl_packet pkt;
    uint8_t codec;
    uint64_t imei;
    switch (f->kind) {
    case AVL_FRAME_PING:
        return len == 1 && p[0] == 0xFF ? 0 : -1000;
    case AVL_FRAME_IMEI:
        return avl_decode_imei(p, len, &imei);
    case AVL_FRAME_AVL:
        return avl_decode_tcp(p, len, &pkt, recs);
    case AVL_FRAME_GPRS:
        return avl_decode_gprs(p, len, &codec, msgs);
    }
    return -1000;
}

/* ---------------------------------------------------------------------------------------------
 * Whole frames, every prefix, guard page
 * ------------------------------------------------------------------------------------------- */

/* Scans p[0 .. avail) and expects the good frame g, len bytes long, at its start. */
static void check_frame_at(const struct good_frame *g, const uint8_t *p, size_t avail, size_t len,
                           enum avl_scan_mode mode)
{
    struct avl_frame f;
    memset(&f, 0xA5, sizeof f);
    int rc = avl_scan(p, avail, mode, 0, &f);
    if (rc != (int)len)
        fail_msg("%s (mode %d): scan gave %d (%s), want %zu", g->name, mode, rc, avl_strerror(rc),
                 len);
    assert_int_equal(f.kind, g->kind);
    assert_int_equal(f.bytes, len);
    if (g->kind == AVL_FRAME_AVL || g->kind == AVL_FRAME_GPRS)
        assert_int_equal(f.codec, g->codec);
}

static void check_whole_frame(const struct good_frame *g, const uint8_t *p, size_t len,
                              enum avl_scan_mode mode)
{
    check_frame_at(g, p, len, len, mode);
}

static void test_whole_frames(void **state)
{
    (void)state;
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    for (size_t i = 0; i < GOOD_FRAMES_LEN; i++) {
        const struct good_frame *g = &good_frames[i];
        size_t len;
        uint8_t *p = hex_alloc(g->hex, &len);
        check_whole_frame(g, p, len, g->mode);
        /* An offline tool tells the two apart by the first u16. */
        check_whole_frame(g, p, len, AVL_SCAN_ANY);
        /* A keep-alive is legal in both connection states. */
        if (g->kind == AVL_FRAME_PING)
            check_whole_frame(g, p, len, AVL_SCAN_DATA);

        /* Trailing bytes of the next frame are not part of this one. */
        uint8_t *more = malloc(len + 32);
        memcpy(more, p, len);
        memset(more + len, 0xFF, 32);
        check_frame_at(g, more, len + 32, len, g->mode);
        free(more);

        struct avl_packet pkt;
        uint8_t codec = 0;
        uint64_t imei = 0;
        int rc;
        switch (g->kind) {
        case AVL_FRAME_PING:
            break;
        case AVL_FRAME_IMEI:
            rc = avl_decode_imei(p, len, &imei);
            if (rc != 0)
                fail_msg("%s: decode_imei %s", g->name, avl_strerror(rc));
            assert_int_equal(imei, g->imei);
            break;
        case AVL_FRAME_AVL:
            rc = avl_decode_tcp(p, len, &pkt, recs);
            if (rc != 0)
                fail_msg("%s: decode_tcp %s", g->name, avl_strerror(rc));
            assert_int_equal(pkt.codec, g->codec);
            assert_int_equal(pkt.records_len, g->avl_records);
            assert_int_equal(pkt.frame_bytes, len);
            break;
        case AVL_FRAME_GPRS:
            rc = avl_decode_gprs(p, len, &codec, msgs);
            if (rc != g->gprs_msgs)
                fail_msg("%s: decode_gprs gave %d (%s)", g->name, rc, avl_strerror(rc));
            assert_int_equal(codec, g->codec);
            break;
        }
        free(p);
    }
}

/* (a) + (c): every strict prefix, placed flush against an unreadable page, says "need more"
 * with a total that is larger than the prefix and no larger than the frame; the decoders
 * given the same prefix refuse it without reading past it. */
static void test_every_prefix_needs_more(void **state)
{
    (void)state;
    struct guard gp;
    guard_init(&gp);
    for (size_t i = 0; i < GOOD_FRAMES_LEN; i++) {
        const struct good_frame *g = &good_frames[i];
        size_t len;
        uint8_t *frame = hex_alloc(g->hex, &len);
        enum avl_scan_mode modes[2] = {g->mode, AVL_SCAN_ANY};
        for (size_t cut = 0; cut < len; cut++) {
            const uint8_t *p = guard_place(&gp, frame, cut);
            for (int m = 0; m < 2; m++) {
                struct avl_frame f;
                memset(&f, 0, sizeof f);
                int rc = avl_scan(p, cut, modes[m], 0, &f);
                if (rc != AVL_NEED_MORE)
                    fail_msg("%s cut at %zu (mode %d): scan gave %d (%s), want need_more", g->name,
                             cut, modes[m], rc, avl_strerror(rc));
                if (f.bytes <= cut || f.bytes > len)
                    fail_msg("%s cut at %zu: need_more asks for %u bytes (frame is %zu)", g->name,
                             cut, f.bytes, len);
                if (cut == 0)
                    assert_int_equal(f.bytes, 1);
            }
            struct avl_frame whole = {.kind = g->kind, .codec = g->codec, .bytes = (uint32_t)len};
            int rc = decode_frame(&whole, p, cut);
            if (rc >= 0)
                fail_msg("%s cut at %zu: decoder accepted a prefix (%d)", g->name, cut, rc);
        }
        /* The whole frame at the page edge scans and decodes. */
        const uint8_t *p = guard_place(&gp, frame, len);
        struct avl_frame f;
        assert_int_equal(avl_scan(p, len, g->mode, 0, &f), (int)len);
        int rc = decode_frame(&f, p, len);
        if (rc < 0)
            fail_msg("%s at the page edge: %s", g->name, avl_strerror(rc));
        free(frame);
    }
    guard_free(&gp);
}

/* (c) for UDP: a datagram and each of its prefixes at the page edge; prefixes are refused. */
static void test_udp_at_page_edge(void **state)
{
    (void)state;
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct guard gp;
    guard_init(&gp);
    for (size_t i = 0; i < sizeof udp_datagrams / sizeof udp_datagrams[0]; i++) {
        size_t len;
        uint8_t *d = hex_alloc(udp_datagrams[i], &len);
        struct avl_packet pkt;
        for (size_t cut = 0; cut < len; cut++) {
            const uint8_t *p = guard_place(&gp, d, cut);
            int rc = avl_decode_udp(p, cut, &pkt, recs);
            if (rc >= 0)
                fail_msg("udp #%zu cut at %zu: accepted", i, cut);
        }
        const uint8_t *p = guard_place(&gp, d, len);
        int rc = avl_decode_udp(p, len, &pkt, recs);
        if (rc != 0)
            fail_msg("udp #%zu at the page edge: %s", i, avl_strerror(rc));
        assert_int_equal(pkt.frame_bytes, len);
        assert_int_equal(pkt.records_len, 1);
        /* The body alone (codec id .. count 2) at the page edge. */
        size_t body = 8 + 15;
        uint16_t n = 0;
        p = guard_place(&gp, d + body, len - body);
        assert_int_equal(avl_decode_body(p, len - body, &n, recs), 0);
        assert_int_equal(n, 1);
        free(d);
    }
    guard_free(&gp);
}

/* Is rc a result the codec may return: success, need more, or a named error? */
static bool result_in_range(int rc)
{
    return rc >= AVL_NEED_MORE || (rc >= AVL_E_ERR_MIN && rc < AVL_NEED_MORE);
}

/* After a successful decode, every IO element must lie inside the packet, and the packet must
 * re-encode to exactly the same bytes: the wire format leaves the encoder no choices. */
static void check_accepted_avl(const char *what, const uint8_t *p, size_t len, bool udp,
                               const struct avl_packet *pkt, const struct avl_record *recs)
{
    static struct avl_record_src src[AVL_RECORDS_MAX];
    for (size_t i = 0; i < pkt->records_len; i++) {
        struct avl_io_iter it;
        struct avl_io io;
        size_t n = 0;
        assert_true(recs[i].io >= p && recs[i].io + recs[i].io_bytes <= p + len);
        avl_io_iter_init(&it, &recs[i]);
        while (avl_io_next(&it, &io)) {
            if (io.bytes < p || io.bytes + io.len > p + len)
                fail_msg("%s: IO element outside the packet", what);
            n++;
        }
        assert_int_equal(n, recs[i].io_total);
    }
    struct avl_io_elem *elems = tu_record_srcs(recs, pkt->records_len, src);
    uint8_t *out = malloc(len + 64);
    int rc = udp ? avl_encode_udp(out, len + 64, pkt->udp_packet_id, pkt->udp_avl_packet_id,
                                  pkt->imei, pkt->codec, src, pkt->records_len)
                 : avl_encode_tcp(out, len + 64, pkt->codec, src, pkt->records_len);
    bool same = rc == (int)len && memcmp(out, p, len) == 0;
    free(out);
    free(elems);
    if (!same)
        fail_msg("%s: accepted, but re-encodes differently (%d bytes for %zu)", what, rc, len);
}

/* (c) Every byte of each good frame changed to a few values, the CRC fixed up so the decoder
 * looks past it, placed at the page edge: scan and decode never fault, return only named
 * results, and whatever they accept re-encodes to the same bytes. */
static void test_mutated_frames_at_page_edge(void **state)
{
    (void)state;
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    struct guard gp;
    guard_init(&gp);
    size_t accepted = 0, refused = 0;
    for (size_t i = 0; i < GOOD_FRAMES_LEN; i++) {
        const struct good_frame *g = &good_frames[i];
        if (g->kind != AVL_FRAME_AVL && g->kind != AVL_FRAME_GPRS)
            continue;
        size_t len;
        uint8_t *frame = hex_alloc(g->hex, &len);
        uint8_t *m = malloc(len);
        for (size_t at = 8; at < len - 4; at++) {
            const uint8_t values[] = {0x00,
                                      0x01,
                                      0x02,
                                      0x7F,
                                      0x80,
                                      0xFF,
                                      (uint8_t)(frame[at] ^ 1),
                                      (uint8_t)(frame[at] + 1)};
            for (size_t k = 0; k < sizeof values; k++) {
                memcpy(m, frame, len);
                m[at] = values[k];
                uint16_t crc = avl_crc16(0, m + 8, len - 12);
                m[len - 2] = (uint8_t)(crc >> 8);
                m[len - 1] = (uint8_t)crc;
                const uint8_t *p = guard_place(&gp, m, len);
                struct avl_frame f;
                int rc = avl_scan(p, len, AVL_SCAN_DATA, 0, &f);
                assert_true(result_in_range(rc));
                struct avl_packet pkt;
                uint8_t codec;
                int drc = avl_decode_tcp(p, len, &pkt, recs);
                int grc = avl_decode_gprs(p, len, &codec, msgs);
                if (!result_in_range(drc) || drc == AVL_NEED_MORE || !result_in_range(grc) ||
                    grc == AVL_NEED_MORE)
                    fail_msg("%s byte %zu = 0x%02x: results %d / %d", g->name, at, values[k], drc,
                             grc);
                /* At most one of the two decoders can accept a frame, and only a frame the
                 * scanner accepts with the matching kind. */
                assert_false(drc == 0 && grc >= 0);
                if (drc == 0) {
                    assert_int_equal(rc, (int)len);
                    assert_int_equal(f.kind, AVL_FRAME_AVL);
                    char what[128];
                    snprintf(what, sizeof what, "%s byte %zu = 0x%02x", g->name, at, values[k]);
                    check_accepted_avl(what, p, len, false, &pkt, recs);
                }
                if (grc >= 0) {
                    assert_int_equal(rc, (int)len);
                    assert_int_equal(f.kind, AVL_FRAME_GPRS);
                    for (int j = 0; j < grc; j++)
                        assert_true(
                            msgs[j].payload >= p && msgs[j].payload + msgs[j].size <= p + len &&
                            msgs[j].text + msgs[j].text_len == msgs[j].payload + msgs[j].size);
                }
                if (drc == 0 || grc >= 0)
                    accepted++;
                else
                    refused++;
            }
        }
        free(m);
        free(frame);
    }
    printf("mutated frames: %zu accepted, %zu refused\n", accepted, refused);
    /* Both outcomes must occur, or the mutations test nothing. */
    assert_true(accepted > 0);
    assert_true(refused > 0);

    /* The same over UDP datagrams (no CRC). */
    for (size_t i = 0; i < sizeof udp_datagrams / sizeof udp_datagrams[0]; i++) {
        size_t len;
        uint8_t *d = hex_alloc(udp_datagrams[i], &len);
        uint8_t *m = malloc(len);
        for (size_t at = 0; at < len; at++) {
            const uint8_t values[] = {0x00, 0x01, 0x7F, 0x80, 0xFF, (uint8_t)(d[at] ^ 1)};
            for (size_t k = 0; k < sizeof values; k++) {
                memcpy(m, d, len);
                m[at] = values[k];
                const uint8_t *p = guard_place(&gp, m, len);
                struct avl_packet pkt;
                int rc = avl_decode_udp(p, len, &pkt, recs);
                assert_true(result_in_range(rc) && rc != AVL_NEED_MORE && rc <= 0);
                /* The encoder writes canonical 15-digit IMEIs and a not-usable byte of 1, so
                 * only such datagrams can come back byte for byte. */
                if (rc == 0 && pkt.udp_not_usable == 1 && p[6] == 0 && p[7] == 15 && p[8] != '0') {
                    char what[128];
                    snprintf(what, sizeof what, "udp #%zu byte %zu = 0x%02x", i, at, values[k]);
                    check_accepted_avl(what, p, len, true, &pkt, recs);
                }
            }
        }
        free(m);
        free(d);
    }
    guard_free(&gp);
}

/* Random bytes at the page edge, through every entry point: no faults, only named results,
 * and "need more" always asks for more than is there. */
static void test_random_bytes_at_page_edge(void **state)
{
    (void)state;
    static struct avl_record recs[AVL_RECORDS_MAX];
    static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];
    struct guard gp;
    guard_init(&gp);
    uint64_t rng = 0xA11CE;
    uint8_t buf[300];
    for (int round = 0; round < 20000; round++) {
        size_t len = (size_t)(tu_rand_u64(&rng) % sizeof buf);
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)tu_rand_u64(&rng);
        /* Bias towards plausible headers so the scan gets past the first checks. */
        unsigned shape = (unsigned)(tu_rand_u64(&rng) % 4);
        if (shape == 1 && len >= 9) {
            memset(buf, 0, 4);
            buf[4] = buf[5] = 0;
            buf[6] = (uint8_t)(len >> 8);
            buf[7] = (uint8_t)((len - 12) & 0xFF);
            buf[8] = (uint8_t[]){0x08, 0x8E, 0x10, 0x0C, 0x0D, 0x0E, 0x0F}[round % 7];
        } else if (shape == 2 && len >= 9) {
            buf[0] = (uint8_t)((len - 2) >> 8);
            buf[1] = (uint8_t)(len - 2);
            buf[6] = 0;
            buf[7] = 15;
        }
        const uint8_t *p = guard_place(&gp, buf, len);
        static const enum avl_scan_mode modes[] = {AVL_SCAN_HANDSHAKE, AVL_SCAN_DATA, AVL_SCAN_ANY};
        for (int m = 0; m < 3; m++) {
            struct avl_frame f;
            int rc = avl_scan(p, len, modes[m], (uint32_t)(round % 3) * 100, &f);
            assert_true(result_in_range(rc));
            if (rc == AVL_NEED_MORE)
                assert_true(f.bytes > len);
            else if (rc > 0)
                assert_true((size_t)rc <= len && f.bytes == (uint32_t)rc);
        }
        struct avl_packet pkt;
        uint8_t codec, avl_id, n;
        uint16_t packet_id, records;
        uint64_t imei;
        int rcs[] = {
            avl_decode_tcp(p, len, &pkt, recs),
            avl_decode_udp(p, len, &pkt, recs),
            avl_decode_gprs(p, len, &codec, msgs),
            avl_decode_imei(p, len, &imei),
            avl_decode_udp_ack(p, len, &packet_id, &avl_id, &n),
            avl_decode_body(p, len, &records, recs),
        };
        for (size_t k = 0; k < sizeof rcs / sizeof rcs[0]; k++)
            if (!result_in_range(rcs[k]) || rcs[k] == AVL_NEED_MORE)
                fail_msg("round %d decoder %zu: result %d", round, k, rcs[k]);
    }
    guard_free(&gp);
}

/* ---------------------------------------------------------------------------------------------
 * (b) Byte-at-a-time feeding
 * ------------------------------------------------------------------------------------------- */

struct seen_frame {
    enum avl_frame_kind kind;
    uint8_t codec;
    uint32_t bytes;
};

/* Scans the frames complete in buf[*start .. have), moving *start and switching *mode to data
 * after the handshake. Fails the test on any error. */
static void scan_available(const uint8_t *buf, size_t have, size_t *start, enum avl_scan_mode *mode,
                           struct seen_frame *out, size_t *out_len, size_t out_cap)
{
    for (;;) {
        struct avl_frame f;
        int rc = avl_scan(buf + *start, have - *start, *mode, 0, &f);
        if (rc == AVL_NEED_MORE) {
            if (f.bytes <= have - *start)
                fail_msg("need_more at %zu asks for %u bytes but %zu are there", *start, f.bytes,
                         have - *start);
            return;
        }
        if (rc <= 0)
            fail_msg("stream at %zu (have %zu): %s", *start, have, avl_strerror(rc));
        assert_true(*out_len < out_cap);
        out[(*out_len)++] = (struct seen_frame){f.kind, f.codec, f.bytes};
        *start += (size_t)rc;
        if (f.kind == AVL_FRAME_IMEI)
            *mode = AVL_SCAN_DATA;
    }
}

static void check_frames(const struct seen_frame *got, size_t got_len,
                         const struct seen_frame *want, size_t want_len)
{
    assert_int_equal(got_len, want_len);
    for (size_t i = 0; i < want_len; i++) {
        if (got[i].kind != want[i].kind || got[i].codec != want[i].codec ||
            got[i].bytes != want[i].bytes)
            fail_msg("frame %zu: kind %d codec 0x%02x %u bytes, want kind %d codec 0x%02x %u", i,
                     got[i].kind, got[i].codec, got[i].bytes, want[i].kind, want[i].codec,
                     want[i].bytes);
    }
}

static void test_byte_at_a_time(void **state)
{
    (void)state;
    /* The stream a device sends: keep-alive, handshake, then every data frame with a
     * keep-alive between some of them. */
    enum { FRAMES_MAX = 64 };
    struct seen_frame want[FRAMES_MAX] = {0};
    size_t want_len = 0, stream_len = 0;
    uint8_t *stream = calloc(1, 16384);
    size_t picks[2 + 2 * GOOD_FRAMES_LEN], picks_len = 0, data_frames = 0;
    picks[picks_len++] = 0; /* ping */
    picks[picks_len++] = 1; /* handshake */
    for (size_t i = 0; i < GOOD_FRAMES_LEN; i++) {
        if (good_frames[i].mode != AVL_SCAN_DATA)
            continue;
        picks[picks_len++] = i;
        if (++data_frames % 2 == 0)
            picks[picks_len++] = 0; /* a keep-alive between data frames */
    }
    for (size_t k = 0; k < picks_len; k++) {
        const struct good_frame *g = &good_frames[picks[k]];
        size_t len;
        uint8_t *p = hex_alloc(g->hex, &len);
        assert_true(stream_len + len <= 16384);
        assert_true(want_len < FRAMES_MAX);
        memcpy(stream + stream_len, p, len);
        stream_len += len;
        want[want_len++] =
            (struct seen_frame){g->kind, g->kind >= AVL_FRAME_AVL ? g->codec : 0, (uint32_t)len};
        free(p);
    }

    /* One shot. */
    struct seen_frame got[FRAMES_MAX];
    size_t got_len = 0, start = 0;
    enum avl_scan_mode mode = AVL_SCAN_HANDSHAKE;
    scan_available(stream, stream_len, &start, &mode, got, &got_len, FRAMES_MAX);
    assert_int_equal(start, stream_len);
    check_frames(got, got_len, want, want_len);

    /* One byte at a time into an accumulating buffer. */
    uint8_t *acc = malloc(stream_len);
    got_len = 0;
    start = 0;
    mode = AVL_SCAN_HANDSHAKE;
    for (size_t have = 1; have <= stream_len; have++) {
        acc[have - 1] = stream[have - 1];
        scan_available(acc, have, &start, &mode, got, &got_len, FRAMES_MAX);
    }
    assert_int_equal(start, stream_len);
    check_frames(got, got_len, want, want_len);

    /* Random chunk sizes (seeded), as TCP delivers them. */
    uint64_t rng = 42;
    for (int round = 0; round < 20; round++) {
        got_len = 0;
        start = 0;
        mode = AVL_SCAN_HANDSHAKE;
        size_t have = 0;
        while (have < stream_len) {
            size_t chunk = 1 + (size_t)(tu_rand_u64(&rng) % 40);
            if (chunk > stream_len - have)
                chunk = stream_len - have;
            memcpy(acc + have, stream + have, chunk);
            have += chunk;
            scan_available(acc, have, &start, &mode, got, &got_len, FRAMES_MAX);
        }
        assert_int_equal(start, stream_len);
        check_frames(got, got_len, want, want_len);
    }
    free(acc);
    free(stream);
}

/* ---------------------------------------------------------------------------------------------
 * (d) Scan modes and IMEI checks
 * ------------------------------------------------------------------------------------------- */

static int scan_hex(const char *hex, size_t cut, enum avl_scan_mode mode, uint32_t max,
                    struct avl_frame *f)
{
    uint8_t buf[128];
    long n = tu_hex_decode(hex, strlen(hex), buf, sizeof buf);
    assert_true(n >= 0);
    if (cut > (size_t)n)
        cut = (size_t)n;
    return avl_scan(buf, cut, mode, max, f);
}

static void test_scan_modes(void **state)
{
    (void)state;
    static const char handshake[] = "000f333536333037303432343431303133";
    static const char ping_handshake[] = "ff000f333536333037303432343431303133";
    static const char data[] = "000000000000000f0c010500000007676574696e666f0100004312";
    struct avl_frame f;
    uint8_t buf[64];
    long n = tu_hex_decode(ping_handshake, strlen(ping_handshake), buf, sizeof buf);
    assert_int_equal(n, 18);

    /* Handshake mode: 0xFF is a keep-alive of its own, then the handshake. */
    assert_int_equal(avl_scan(buf, (size_t)n, AVL_SCAN_HANDSHAKE, 0, &f), 1);
    assert_int_equal(f.kind, AVL_FRAME_PING);
    assert_int_equal(f.bytes, 1);
    assert_int_equal(avl_scan(buf + 1, (size_t)n - 1, AVL_SCAN_HANDSHAKE, 0, &f), 17);
    assert_int_equal(f.kind, AVL_FRAME_IMEI);
    uint64_t imei = 0;
    assert_int_equal(avl_decode_imei(buf + 1, 17, &imei), 0);
    assert_int_equal(imei, 356307042441013u);

    /* Data mode: a handshake-looking first u16 is a bad preamble, as soon as it is visible. */
    assert_int_equal(scan_hex(handshake, 100, AVL_SCAN_DATA, 0, &f), AVL_E_BAD_PREAMBLE);
    assert_int_equal(scan_hex(handshake, 2, AVL_SCAN_DATA, 0, &f), AVL_E_BAD_PREAMBLE);
    assert_int_equal(scan_hex(handshake, 1, AVL_SCAN_DATA, 0, &f), AVL_NEED_MORE);
    /* ... and 0xFF is still a keep-alive. */
    assert_int_equal(scan_hex(ping_handshake, 100, AVL_SCAN_DATA, 0, &f), 1);
    assert_int_equal(f.kind, AVL_FRAME_PING);

    /* Handshake mode: a data frame reads as an IMEI of length 0. */
    assert_int_equal(scan_hex(data, 100, AVL_SCAN_HANDSHAKE, 0, &f), AVL_E_IMEI_LENGTH);

    /* Any mode tells them apart by the first u16. */
    assert_int_equal(scan_hex(handshake, 100, AVL_SCAN_ANY, 0, &f), 17);
    assert_int_equal(f.kind, AVL_FRAME_IMEI);
    assert_int_equal(scan_hex(data, 100, AVL_SCAN_ANY, 0, &f), 27);
    assert_int_equal(f.kind, AVL_FRAME_GPRS);
    assert_int_equal(f.codec, AVL_CODEC_12);
    assert_int_equal(scan_hex(ping_handshake, 100, AVL_SCAN_ANY, 0, &f), 1);
    assert_int_equal(f.kind, AVL_FRAME_PING);

    /* IMEI lengths: 0 and 18 are refused once the u16 is visible; 17 is the largest. */
    static const enum avl_scan_mode imei_modes[] = {AVL_SCAN_HANDSHAKE, AVL_SCAN_ANY};
    for (int m = 0; m < 2; m++) {
        enum avl_scan_mode mode = imei_modes[m];
        if (mode == AVL_SCAN_HANDSHAKE)
            assert_int_equal(scan_hex("0000", 2, mode, 0, &f), AVL_E_IMEI_LENGTH);
        assert_int_equal(scan_hex("0012", 2, mode, 0, &f), AVL_E_IMEI_LENGTH);
        assert_int_equal(scan_hex("0012313233343536373839303132333435363738", 100, mode, 0, &f),
                         AVL_E_IMEI_LENGTH);
        assert_int_equal(scan_hex("0100", 2, mode, 0, &f), AVL_E_IMEI_LENGTH);
        assert_int_equal(scan_hex("0011", 2, mode, 0, &f), AVL_NEED_MORE);
        assert_int_equal(f.bytes, 19);
        assert_int_equal(scan_hex("0001", 2, mode, 0, &f), AVL_NEED_MORE);
        assert_int_equal(f.bytes, 3);
    }

    /* A non-digit is refused as soon as it is visible, wherever it is. */
    for (size_t bad = 0; bad < 15; bad++) {
        static const uint8_t not_digits[] = {'/', ':', 'A', ' ', 0x00, 0x80};
        for (size_t k = 0; k < sizeof not_digits; k++) {
            uint8_t hs[17];
            assert_int_equal(tu_hex_decode(handshake, 34, hs, sizeof hs), 17);
            hs[2 + bad] = not_digits[k];
            for (size_t cut = 0; cut <= sizeof hs; cut++) {
                int rc = avl_scan(hs, cut, AVL_SCAN_HANDSHAKE, 0, &f);
                int want = cut > 2 + bad ? AVL_E_IMEI_DIGITS : AVL_NEED_MORE;
                if (rc != want)
                    fail_msg("digit %zu = 0x%02x, cut %zu: got %s, want %s", bad, not_digits[k],
                             cut, avl_strerror(rc), avl_strerror(want));
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * (e) Length bounds, preamble, codec
 * ------------------------------------------------------------------------------------------- */

static void put_header(uint8_t *p, uint32_t data_bytes, uint8_t codec)
{
    memset(p, 0, 8);
    p[4] = (uint8_t)(data_bytes >> 24);
    p[5] = (uint8_t)(data_bytes >> 16);
    p[6] = (uint8_t)(data_bytes >> 8);
    p[7] = (uint8_t)data_bytes;
    p[8] = codec;
    p[9] = 0;
}

/* Scans the 10-byte header of a frame whose data length is data_bytes. */
static int scan_header(uint32_t data_bytes, uint32_t max, struct avl_frame *f)
{
    uint8_t h[10];
    put_header(h, data_bytes, AVL_CODEC_8);
    return avl_scan(h, sizeof h, AVL_SCAN_DATA, max, f);
}

static void test_length_bounds(void **state)
{
    (void)state;
    struct avl_frame f;
    for (uint32_t d = 0; d < AVL_DATA_BYTES_MIN; d++) {
        uint8_t h[10];
        put_header(h, d, AVL_CODEC_8);
        assert_int_equal(avl_scan(h, 7, AVL_SCAN_DATA, 0, &f), AVL_NEED_MORE);
        assert_int_equal(avl_scan(h, 8, AVL_SCAN_DATA, 0, &f), AVL_E_LENGTH_TOO_SMALL);
        assert_int_equal(avl_scan(h, 10, AVL_SCAN_DATA, 0, &f), AVL_E_LENGTH_TOO_SMALL);
    }
    assert_int_equal(scan_header(3, 0, &f), AVL_NEED_MORE);
    assert_int_equal(f.bytes, 15);

    /* A small custom maximum: a frame of exactly max bytes is fine, one more is not. */
    assert_int_equal(scan_header(100 - 12, 100, &f), AVL_NEED_MORE);
    assert_int_equal(f.bytes, 100);
    assert_int_equal(scan_header(100 - 11, 100, &f), AVL_E_FRAME_TOO_LARGE);
    {
        /* A whole good frame above the maximum is refused, at its maximum it passes. */
        uint8_t cmd[27];
        assert_int_equal(tu_hex_decode("000000000000000f0c010500000007676574696e666f0100004312", 54,
                                       cmd, sizeof cmd),
                         27);
        assert_int_equal(avl_scan(cmd, 27, AVL_SCAN_DATA, 26, &f), AVL_E_FRAME_TOO_LARGE);
        assert_int_equal(avl_scan(cmd, 27, AVL_SCAN_DATA, 27, &f), 27);
    }

    /* 0 means the default, 64 KiB. */
    assert_int_equal(scan_header(AVL_FRAME_BYTES_MAX_DEFAULT - 12, 0, &f), AVL_NEED_MORE);
    assert_int_equal(f.bytes, AVL_FRAME_BYTES_MAX_DEFAULT);
    assert_int_equal(scan_header(AVL_FRAME_BYTES_MAX_DEFAULT - 11, 0, &f), AVL_E_FRAME_TOO_LARGE);

    /* A maximum above the ceiling is clamped to it. */
    const uint32_t above[] = {AVL_FRAME_BYTES_MAX_CEILING + 1, 0x7FFFFFFFu, UINT32_MAX};
    for (size_t i = 0; i < sizeof above / sizeof above[0]; i++) {
        assert_int_equal(scan_header(AVL_FRAME_BYTES_MAX_CEILING - 12, above[i], &f),
                         AVL_NEED_MORE);
        assert_int_equal(f.bytes, AVL_FRAME_BYTES_MAX_CEILING);
        assert_int_equal(scan_header(AVL_FRAME_BYTES_MAX_CEILING - 11, above[i], &f),
                         AVL_E_FRAME_TOO_LARGE);
        /* A length that would overflow a u32 frame size. */
        assert_int_equal(scan_header(UINT32_MAX, above[i], &f), AVL_E_FRAME_TOO_LARGE);
        assert_int_equal(scan_header(UINT32_MAX - 11, above[i], &f), AVL_E_FRAME_TOO_LARGE);
    }
    assert_int_equal(scan_header(UINT32_MAX, 0, &f), AVL_E_FRAME_TOO_LARGE);
}

static void test_bad_preamble_early(void **state)
{
    (void)state;
    struct avl_frame f;
    static const uint8_t bad_values[] = {0x01, 0x0F, 0x10, 0x80, 0xFE, 0xFF};
    for (size_t pos = 0; pos < 4; pos++) {
        for (size_t k = 0; k < sizeof bad_values; k++) {
            /* 0xFF first is a keep-alive, not a preamble error. */
            if (pos == 0 && bad_values[k] == 0xFF)
                continue;
            uint8_t h[10];
            put_header(h, 0x20, AVL_CODEC_8);
            h[pos] = bad_values[k];
            for (size_t cut = 0; cut <= sizeof h; cut++) {
                int rc = avl_scan(h, cut, AVL_SCAN_DATA, 0, &f);
                int want = cut > pos ? AVL_E_BAD_PREAMBLE : AVL_NEED_MORE;
                if (rc != want)
                    fail_msg("preamble byte %zu = 0x%02x, cut %zu: got %s, want %s", pos,
                             bad_values[k], cut, avl_strerror(rc), avl_strerror(want));
            }
            /* Any mode: a zero first u16 commits to a data frame. */
            if (pos >= 2) {
                assert_int_equal(avl_scan(h, pos, AVL_SCAN_ANY, 0, &f), AVL_NEED_MORE);
                assert_int_equal(avl_scan(h, pos + 1, AVL_SCAN_ANY, 0, &f), AVL_E_BAD_PREAMBLE);
            }
        }
    }
}

static void test_codec_byte(void **state)
{
    (void)state;
    struct avl_frame f;
    for (unsigned c = 0; c < 256; c++) {
        uint8_t h[10];
        put_header(h, 0x20, (uint8_t)c);
        bool avl = c == 0x08 || c == 0x8E || c == 0x10;
        bool gprs = c >= 0x0C && c <= 0x0F;
        assert_int_equal(avl_codec_is_avl((uint8_t)c), avl);
        assert_int_equal(avl_codec_is_gprs((uint8_t)c), gprs);
        assert_int_equal(avl_codec_name((uint8_t)c) != NULL, avl || gprs);
        /* Undecided until byte 8 is there. */
        assert_int_equal(avl_scan(h, 8, AVL_SCAN_DATA, 0, &f), AVL_NEED_MORE);
        assert_int_equal(f.bytes, 0x20 + 12);
        int rc = avl_scan(h, 9, AVL_SCAN_DATA, 0, &f);
        if (avl || gprs) {
            assert_int_equal(rc, AVL_NEED_MORE);
            assert_int_equal(f.bytes, 0x20 + 12);
        } else if (rc != AVL_E_CODEC_UNKNOWN) {
            fail_msg("codec 0x%02x: got %s, want codec_unknown", c, avl_strerror(rc));
        }
    }
    /* Codec 7 (legacy GH3000) is out of scope and refused by name. */
    assert_string_equal(avl_codec_name(AVL_CODEC_8E), "8E");
    assert_string_equal(avl_codec_name(AVL_CODEC_16), "16");
    assert_null(avl_codec_name(0x07));
}

/* ---------------------------------------------------------------------------------------------
 * (f) Error names
 * ------------------------------------------------------------------------------------------- */

static void test_strerror(void **state)
{
    (void)state;
    assert_string_equal(avl_strerror(AVL_OK), "ok");
    assert_string_equal(avl_strerror(7), "ok");
    assert_string_equal(avl_strerror(AVL_NEED_MORE), "need_more");
    assert_string_equal(avl_strerror(AVL_E_CRC_MISMATCH), "crc_mismatch");
    assert_string_equal(avl_strerror(AVL_E_ERR_MIN - 1), "unknown_error");
    assert_string_equal(avl_strerror(-1000000), "unknown_error");
    for (int e = AVL_E_ERR_MIN; e <= -1; e++) {
        const char *name = avl_strerror(e);
        assert_non_null(name);
        if (name[0] == '\0')
            fail_msg("error %d has an empty name", e);
        for (const char *c = name; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
                fail_msg("error %d name \"%s\" is not lowercase", e, name);
        assert_string_not_equal(name, "ok");
        assert_string_not_equal(name, "unknown_error");
        for (int other = AVL_E_ERR_MIN; other < e; other++)
            if (strcmp(name, avl_strerror(other)) == 0)
                fail_msg("errors %d and %d share the name \"%s\"", e, other, name);
    }
}

/* ---------------------------------------------------------------------------------------------
 * (g) Timestamps
 * ------------------------------------------------------------------------------------------- */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* Rewrites the CRC field after a patch of the data field. */
static void fix_crc(uint8_t *frame, size_t len)
{
    uint16_t crc = avl_crc16(0, frame + 8, len - 12);
    frame[len - 4] = 0;
    frame[len - 3] = 0;
    frame[len - 2] = (uint8_t)(crc >> 8);
    frame[len - 1] = (uint8_t)crc;
}

static struct avl_record_src ts_record(uint64_t ts_ms)
{
    static const struct avl_io_elem io[] = {
        {.id = 21, .width = 1, .value = 3},
        {.id = 66, .width = 2, .value = 24079},
    };
    struct avl_record_src src;
    memset(&src, 0, sizeof src);
    src.rec.ts_ms = ts_ms;
    src.rec.priority = 1;
    src.rec.lon_e7 = -1003628933;
    src.rec.lat_e7 = 205798350;
    src.rec.altitude_m = -12;
    src.rec.angle_deg = 359;
    src.rec.satellites = 9;
    src.rec.speed_kmh = 88;
    src.rec.event_id = 66;
    src.rec.generation = AVL_GENERATION_NONE;
    src.rec.codec = AVL_CODEC_8;
    src.io = io;
    src.io_len = 2;
    return src;
}

static void test_timestamps(void **state)
{
    (void)state;
    static struct avl_record recs[AVL_RECORDS_MAX];
    struct avl_packet pkt;
    uint8_t frame[256], dgram[256];
    const uint64_t good[] = {0, 1, 1560161086000u, AVL_TS_MS_END - 1};
    const size_t ts_off_tcp = 8 + 2, ts_off_udp = 8 + 15 + 2;

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct avl_record_src src = ts_record(good[i]);
        int len = avl_encode_tcp(frame, sizeof frame, AVL_CODEC_8, &src, 1);
        assert_true(len > 0);
        int rc = avl_decode_tcp(frame, (size_t)len, &pkt, recs);
        if (rc != 0)
            fail_msg("ts %llu: %s", (unsigned long long)good[i], avl_strerror(rc));
        assert_int_equal(recs[0].ts_ms, good[i]);
        assert_int_equal(recs[0].lon_e7, src.rec.lon_e7);
        assert_int_equal(recs[0].lat_e7, src.rec.lat_e7);
        assert_int_equal(recs[0].altitude_m, src.rec.altitude_m);
        assert_int_equal(recs[0].io_total, 2);

        int ulen =
            avl_encode_udp(dgram, sizeof dgram, 0xCAFE, 5, 352093086403655u, AVL_CODEC_8, &src, 1);
        assert_true(ulen > 0);
        assert_int_equal(avl_decode_udp(dgram, (size_t)ulen, &pkt, recs), 0);
        assert_int_equal(recs[0].ts_ms, good[i]);
    }

    /* The encoder refuses timestamps at or past the end ... */
    struct avl_record_src src = ts_record(AVL_TS_MS_END);
    assert_int_equal(avl_encode_tcp(frame, sizeof frame, AVL_CODEC_8, &src, 1), AVL_E_ENCODE_RANGE);
    assert_int_equal(avl_encode_udp(dgram, sizeof dgram, 1, 1, 1, AVL_CODEC_8, &src, 1),
                     AVL_E_ENCODE_RANGE);

    /* ... so patch a good frame's timestamp and CRC by hand: the decoder must refuse it. */
    const uint64_t bad[] = {AVL_TS_MS_END, AVL_TS_MS_END + 1, UINT64_MAX};
    src = ts_record(AVL_TS_MS_END - 1);
    int len = avl_encode_tcp(frame, sizeof frame, AVL_CODEC_8, &src, 1);
    int ulen =
        avl_encode_udp(dgram, sizeof dgram, 0xCAFE, 5, 352093086403655u, AVL_CODEC_8, &src, 1);
    assert_true(len > 0 && ulen > 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_be64(frame + ts_off_tcp, bad[i]);
        fix_crc(frame, (size_t)len);
        int rc = avl_decode_tcp(frame, (size_t)len, &pkt, recs);
        if (rc != AVL_E_TS_OUT_OF_RANGE)
            fail_msg("tcp ts %llu: got %s", (unsigned long long)bad[i], avl_strerror(rc));
        put_be64(dgram + ts_off_udp, bad[i]);
        rc = avl_decode_udp(dgram, (size_t)ulen, &pkt, recs);
        if (rc != AVL_E_TS_OUT_OF_RANGE)
            fail_msg("udp ts %llu: got %s", (unsigned long long)bad[i], avl_strerror(rc));
    }
}

/* ---------------------------------------------------------------------------------------------
 * (h) IMEI
 * ------------------------------------------------------------------------------------------- */

static void test_imei(void **state)
{
    (void)state;
    static const char digits[] = "123456789012345678";
    char out[AVL_IMEI_DIGITS_MAX + 1];
    uint64_t imei, want = 0;
    for (size_t n = 1; n <= AVL_IMEI_DIGITS_MAX; n++) {
        want = want * 10 + (uint64_t)(digits[n - 1] - '0');
        imei = 0;
        assert_int_equal(avl_imei_parse((const uint8_t *)digits, n, &imei), 0);
        assert_int_equal(imei, want);
        assert_true(avl_imei_valid(imei));
        int w = avl_imei_format(imei, out);
        size_t shown = n > AVL_IMEI_CANONICAL_DIGITS ? n : AVL_IMEI_CANONICAL_DIGITS;
        assert_int_equal(w, (int)shown);
        assert_int_equal(strlen(out), shown);
        /* Zero-padded on the left, then the digits as given. */
        for (size_t i = 0; i < shown - n; i++)
            assert_int_equal(out[i], '0');
        assert_memory_equal(out + shown - n, digits, n);

        /* The handshake round trip. */
        uint8_t hs[AVL_HANDSHAKE_BYTES_MAX];
        int hl = avl_encode_imei(hs, sizeof hs, imei);
        assert_int_equal(hl, 2 + (int)shown);
        struct avl_frame f;
        assert_int_equal(avl_scan(hs, (size_t)hl, AVL_SCAN_HANDSHAKE, 0, &f), hl);
        uint64_t back = 0;
        assert_int_equal(avl_decode_imei(hs, (size_t)hl, &back), 0);
        assert_int_equal(back, imei);
    }
    assert_int_equal(avl_imei_format(1, out), 15);
    assert_string_equal(out, "000000000000001");
    assert_int_equal(avl_imei_format(0, out), 15);
    assert_string_equal(out, "000000000000000");
    assert_int_equal(avl_imei_format(352093086403655u, out), 15);
    assert_string_equal(out, "352093086403655");

    /* 17 digits round trip; 18 do not fit. */
    const uint8_t *max17 = (const uint8_t *)"99999999999999999";
    assert_int_equal(avl_imei_parse(max17, 17, &imei), 0);
    assert_int_equal(imei, 99999999999999999u);
    assert_int_equal(avl_imei_format(imei, out), 17);
    assert_string_equal(out, "99999999999999999");
    assert_true(avl_imei_valid(99999999999999999u));
    assert_false(avl_imei_valid(100000000000000000u));
    assert_false(avl_imei_valid(UINT64_MAX));
    assert_int_equal(avl_imei_parse((const uint8_t *)digits, 18, &imei), AVL_E_IMEI_LENGTH);
    assert_int_equal(avl_imei_parse((const uint8_t *)"999999999999999999", 18, &imei),
                     AVL_E_IMEI_LENGTH);
    assert_int_equal(avl_imei_parse((const uint8_t *)digits, 0, &imei), AVL_E_IMEI_LENGTH);
    assert_int_equal(avl_imei_parse((const uint8_t *)"35209308640365a", 15, &imei),
                     AVL_E_IMEI_DIGITS);
    assert_int_equal(avl_imei_parse((const uint8_t *)"/", 1, &imei), AVL_E_IMEI_DIGITS);
    assert_int_equal(avl_imei_parse((const uint8_t *)":", 1, &imei), AVL_E_IMEI_DIGITS);
    uint8_t hs[32];
    assert_true(avl_encode_imei(hs, sizeof hs, 100000000000000000u) < 0);
    /* Too small an output buffer. */
    assert_int_equal(avl_encode_imei(hs, 16, 352093086403655u), AVL_E_NO_SPACE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_frames),
        cmocka_unit_test(test_every_prefix_needs_more),
        cmocka_unit_test(test_udp_at_page_edge),
        cmocka_unit_test(test_mutated_frames_at_page_edge),
        cmocka_unit_test(test_random_bytes_at_page_edge),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_scan_modes),
        cmocka_unit_test(test_length_bounds),
        cmocka_unit_test(test_bad_preamble_early),
        cmocka_unit_test(test_codec_byte),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_imei),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
