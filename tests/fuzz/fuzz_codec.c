/* fuzz_codec.c — libFuzzer target over the codec's frame scanner and every decoder.
 *
 * Input: byte 0 is control (bits 0..5 pick a small frame_bytes_max of 15 + 8 * k bytes; bit 6
 * feeds the scanner one byte at a time instead of jumping to the length it asks for; bit 7
 * also cuts each frame's decode input at every length), the rest is a TCP stream or a datagram.
 * The stream is scanned from a new connection (handshake, then data), in data mode and in
 * "any" mode, each with the small and the default limit, and every complete frame is decoded
 * with the decoder for its kind; the whole rest also goes to the UDP, UDP ACK, IMEI and body
 * decoders. Every buffer handed to the codec is an exactly-sized heap copy, so ASan reports any
 * read past the end.
 *
 * Invariants (a broken one calls __builtin_trap() after printing which):
 *   - every error is a named one (avl_strerror is not "unknown_error");
 *   - need_more always asks for more bytes than were given, and a strict prefix of a frame the
 *     scanner found is need_more; the scanner's verdict does not depend on how the bytes arrived;
 *   - a successful decode re-encodes to identical bytes (AVL TCP, GPRS, UDP and UDP ACK when
 *     the IMEI is in canonical form, the handshake likewise), IO iteration stays inside the
 *     record and yields exactly io_total elements.
 * Single-threaded, as libFuzzer calls it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/avl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_codec: invariant failed at line %d: %s\n", __LINE__, #cond);     \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_NAMED(rc)                                                                            \
    do {                                                                                           \
        int rc_ = (rc);                                                                            \
        if (rc_ < 0 && strcmp(avl_strerror(rc_), "unknown_error") == 0) {                          \
            fprintf(stderr, "fuzz_codec: unnamed error %d at line %d\n", rc_, __LINE__);           \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

static struct avl_record recs[AVL_RECORDS_MAX];
static struct avl_gprs_msg msgs[AVL_GPRS_MSGS_MAX];

static uint8_t *heap_copy(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    if (!c)
        abort();
    if (n)
        memcpy(c, p, n);
    return c;
}

/* Encoder sources rebuilt from decoded records: the IO elements point into the packet. */
struct sources {
    struct avl_record_src *src;
    struct avl_io_elem *io;
};

/* Walks every record's IO, checks it stays inside [p, p + len) and yields io_total elements,
 * and fills s for re-encoding. Free with sources_free(). */
static void sources_build(const uint8_t *p, size_t len, uint8_t codec, uint16_t n,
                          struct sources *s)
{
    size_t io_cap = len / 2 + 1; /* the smallest element takes 2 bytes */
    s->src = calloc(n ? n : 1, sizeof *s->src);
    s->io = calloc(io_cap, sizeof *s->io);
    if (!s->src || !s->io)
        abort();
    size_t k = 0;
    for (uint16_t i = 0; i < n; i++) {
        const struct avl_record *r = &recs[i];
        CHECK(r->codec == codec);
        CHECK(r->ts_ms < AVL_TS_MS_END);
        CHECK(r->io >= p && r->io_bytes <= len && r->io + r->io_bytes <= p + len);
        CHECK(codec == AVL_CODEC_16 || r->generation == AVL_GENERATION_NONE);
        s->src[i].rec = *r;
        s->src[i].io = s->io + k;
        struct avl_io_iter it;
        struct avl_io e;
        uint32_t count = 0;
        avl_io_iter_init(&it, r);
        while (avl_io_next(&it, &e)) {
            CHECK(e.bytes >= r->io && e.bytes + e.len <= r->io + r->io_bytes);
            CHECK(e.nx ? codec == AVL_CODEC_8E && e.value == 0
                       : (e.len == 1 || e.len == 2 || e.len == 4 || e.len == 8));
            CHECK(codec != AVL_CODEC_8 || e.id <= 0xFF);
            CHECK(k < io_cap);
            s->io[k++] = (struct avl_io_elem){
                .id = e.id,
                .width = e.nx ? 0 : (uint8_t)e.len,
                .nx_len = e.nx ? e.len : 0,
                .value = e.value,
                .nx = e.nx ? e.bytes : NULL,
            };
            count++;
        }
        CHECK(count == r->io_total);
        CHECK(!avl_io_next(&it, &e));
        s->src[i].io_len = (uint16_t)count;
    }
}

static void sources_free(struct sources *s)
{
    free(s->io);
    free(s->src);
}

static void decode_avl_tcp(const uint8_t *p, size_t n)
{
    struct avl_packet pkt;
    int rc = avl_decode_tcp(p, n, &pkt, recs);
    CHECK(rc <= 0);
    CHECK_NAMED(rc);
    if (rc != 0)
        return;
    CHECK(pkt.frame_bytes == n && avl_codec_is_avl(pkt.codec));
    CHECK(pkt.records_len <= AVL_RECORDS_MAX);
    struct sources s;
    sources_build(p, n, pkt.codec, pkt.records_len, &s);
    uint8_t *out = malloc(n);
    if (!out)
        abort();
    int m = avl_encode_tcp(out, n, pkt.codec, s.src, pkt.records_len);
    CHECK(m == (int)n);
    CHECK(memcmp(out, p, n) == 0);
    free(out);
    sources_free(&s);
}

static void decode_gprs(const uint8_t *p, size_t n)
{
    uint8_t codec = 0;
    int rc = avl_decode_gprs(p, n, &codec, msgs);
    CHECK_NAMED(rc);
    if (rc < 0)
        return;
    CHECK(avl_codec_is_gprs(codec) && rc <= AVL_GPRS_MSGS_MAX);
    for (int i = 0; i < rc; i++) {
        const struct avl_gprs_msg *m = &msgs[i];
        CHECK(m->payload >= p && m->size <= n && m->payload + m->size <= p + n);
        CHECK(m->text >= m->payload && m->text + m->text_len == m->payload + m->size);
    }
    uint8_t *out = malloc(n);
    if (!out)
        abort();
    int m = avl_encode_gprs(out, n, codec, msgs, (size_t)rc);
    CHECK(m == (int)n);
    CHECK(memcmp(out, p, n) == 0);
    free(out);
}

static void decode_imei(const uint8_t *p, size_t n)
{
    uint64_t imei;
    int rc = avl_decode_imei(p, n, &imei);
    CHECK(rc <= 0);
    CHECK_NAMED(rc);
    if (rc != 0)
        return;
    CHECK(avl_imei_valid(imei));
    char digits[AVL_IMEI_DIGITS_MAX + 1];
    int nd = avl_imei_format(imei, digits);
    uint8_t out[AVL_HANDSHAKE_BYTES_MAX];
    int m = avl_encode_imei(out, sizeof out, imei);
    CHECK(m == 2 + nd);
    /* Canonical digits (at least 15, no extra leading zeros) come back byte for byte. */
    if ((size_t)nd + 2 == n)
        CHECK(memcmp(out, p, n) == 0);
}

/* Decodes one frame found by the scanner, from an exact copy; with cut_all, also every strict
 * prefix of it (a sample of them for frames above 512 bytes), which no decoder may accept. */
static void decode_frame(const uint8_t *frame, size_t n, const struct avl_frame *f, bool cut_all)
{
    uint8_t *c = heap_copy(frame, n);
    switch (f->kind) {
    case AVL_FRAME_PING:
        CHECK(n == 1 && c[0] == 0xFF);
        break;
    case AVL_FRAME_IMEI:
        decode_imei(c, n);
        break;
    case AVL_FRAME_AVL:
        CHECK(avl_codec_is_avl(f->codec) && c[AVL_TCP_HEADER_BYTES] == f->codec);
        decode_avl_tcp(c, n);
        break;
    case AVL_FRAME_GPRS:
        CHECK(avl_codec_is_gprs(f->codec) && c[AVL_TCP_HEADER_BYTES] == f->codec);
        decode_gprs(c, n);
        break;
    default:
        CHECK(!"unknown frame kind");
    }
    free(c);
    if (!cut_all || f->kind == AVL_FRAME_PING)
        return;
    for (size_t k = 0; k < n; k++) {
        if (n > 512 && k > 32 && k != n / 2 && k + 1 != n)
            continue; /* long frames: the header cuts, the middle and the last */
        uint8_t *pre = heap_copy(frame, k);
        struct avl_packet pkt;
        uint8_t codec;
        uint64_t imei;
        int rc = f->kind == AVL_FRAME_IMEI  ? avl_decode_imei(pre, k, &imei)
                 : f->kind == AVL_FRAME_AVL ? avl_decode_tcp(pre, k, &pkt, recs)
                                            : avl_decode_gprs(pre, k, &codec, msgs);
        CHECK(rc < AVL_NEED_MORE);
        CHECK_NAMED(rc);
        free(pre);
    }
}

/* The scanner on p[0 .. left) as a receiver would call it while bytes arrive: from 1 byte up,
 * either one byte at a time (through the first 32 bytes: the scanner reads headers only) or
 * jumping to the length need_more asks for. The verdict reached
 * must equal the one on all the bytes at once. */
static void scan_incremental(const uint8_t *p, size_t left, enum avl_scan_mode mode, uint32_t limit,
                             bool byte_at_a_time, int full_rc, const struct avl_frame *full)
{
    size_t k = 1;
    if (left == 0)
        return;
    for (;;) {
        uint8_t *c = heap_copy(p, k);
        struct avl_frame f;
        int rc = avl_scan(c, k, mode, limit, &f);
        free(c);
        if (rc == AVL_NEED_MORE) {
            CHECK(f.bytes > k);
            if (k == left) { /* the same call as the full one */
                CHECK(full_rc == AVL_NEED_MORE && full->bytes == f.bytes);
                return;
            }
            /* Byte by byte through the header (all the scanner reads), then as asked, or all
             * that has arrived when that is less. */
            k = byte_at_a_time && k < 32 ? k + 1 : f.bytes;
            if (k > left)
                k = left;
            continue;
        }
        CHECK(rc == full_rc);
        if (rc > 0)
            CHECK(f.kind == full->kind && f.codec == full->codec && f.bytes == full->bytes);
        return;
    }
}

static void scan_stream(const uint8_t *p, size_t n, enum avl_scan_mode start, uint32_t limit,
                        uint8_t ctl)
{
    enum avl_scan_mode mode = start;
    size_t off = 0;
    unsigned frames = 0;
    while (off < n && frames < 4096) {
        size_t left = n - off;
        struct avl_frame f;
        /* p is the caller's exactly-sized heap copy: p + off .. p + n ends where it ends. */
        int rc = avl_scan(p + off, left, mode, limit, &f);
        CHECK_NAMED(rc);
        scan_incremental(p + off, left, mode, limit, ctl & 0x40, rc, &f);
        if (rc == AVL_NEED_MORE) {
            CHECK(f.bytes > left);
            return;
        }
        if (rc < 0)
            return; /* a stream error closes the connection */
        CHECK(rc > 0 && (size_t)rc <= left && f.bytes == (uint32_t)rc);
        uint32_t eff = limit == 0                            ? AVL_FRAME_BYTES_MAX_DEFAULT
                       : limit > AVL_FRAME_BYTES_MAX_CEILING ? AVL_FRAME_BYTES_MAX_CEILING
                                                             : limit;
        if (f.kind == AVL_FRAME_AVL || f.kind == AVL_FRAME_GPRS)
            CHECK(f.bytes <= eff);
        /* Strict prefixes of what was found: need more, asking for no more than the frame. */
        for (size_t k = 0; k < (size_t)rc; k++) {
            if (rc > 64 && k > 9 && k + 1 < (size_t)rc)
                continue; /* long frames: the header cuts and the last one */
            uint8_t *pre = heap_copy(p + off, k);
            struct avl_frame pf;
            int prc = avl_scan(pre, k, mode, limit, &pf);
            free(pre);
            CHECK(prc == AVL_NEED_MORE);
            CHECK(pf.bytes > k && pf.bytes <= (uint32_t)rc);
        }
        decode_frame(p + off, (size_t)rc, &f, ctl & 0x80);
        if (mode == AVL_SCAN_HANDSHAKE && f.kind == AVL_FRAME_IMEI)
            mode = AVL_SCAN_DATA;
        off += (size_t)rc;
        frames++;
    }
}

/* The whole input as one datagram, handshake, ACK or body. */
static void decode_whole(const uint8_t *p, size_t n)
{
    struct avl_packet pkt;
    int rc = avl_decode_udp(p, n, &pkt, recs);
    CHECK(rc <= 0);
    CHECK_NAMED(rc);
    if (rc == 0) {
        CHECK(pkt.frame_bytes == n && avl_codec_is_avl(pkt.codec) && avl_imei_valid(pkt.imei));
        struct sources s;
        sources_build(p, n, pkt.codec, pkt.records_len, &s);
        /* Byte for byte when the IMEI is in canonical digits and byte 4 is the usual 0x01. */
        char digits[AVL_IMEI_DIGITS_MAX + 1];
        size_t nd = (size_t)avl_imei_format(pkt.imei, digits);
        size_t digits_sent = (size_t)p[6] << 8 | p[7];
        if (digits_sent == nd && pkt.udp_not_usable == 0x01) {
            uint8_t *out = malloc(n);
            if (!out)
                abort();
            int m = avl_encode_udp(out, n, pkt.udp_packet_id, pkt.udp_avl_packet_id, pkt.imei,
                                   pkt.codec, s.src, pkt.records_len);
            CHECK(m == (int)n);
            CHECK(memcmp(out, p, n) == 0);
            free(out);
        }
        sources_free(&s);
    }

    uint16_t pid;
    uint8_t avl_id, count;
    rc = avl_decode_udp_ack(p, n, &pid, &avl_id, &count);
    CHECK(rc <= 0);
    CHECK_NAMED(rc);
    if (rc == 0) {
        uint8_t out[AVL_UDP_ACK_BYTES];
        CHECK(avl_encode_udp_ack(out, pid, avl_id, count) == AVL_UDP_ACK_BYTES);
        if (p[4] == 0x01)
            CHECK(memcmp(out, p, AVL_UDP_ACK_BYTES) == 0);
    }

    decode_imei(p, n);

    uint16_t nrec = 0;
    rc = avl_decode_body(p, n, &nrec, recs);
    CHECK(rc <= 0);
    CHECK_NAMED(rc);
    if (rc == 0) {
        CHECK(avl_codec_is_avl(p[0]) && nrec == p[1]);
        struct sources s;
        sources_build(p, n, p[0], nrec, &s);
        size_t cap = n + AVL_TCP_OVERHEAD_BYTES;
        uint8_t *out = malloc(cap);
        if (!out)
            abort();
        int m = avl_encode_tcp(out, cap, p[0], s.src, nrec);
        CHECK(m == (int)cap);
        CHECK(memcmp(out + AVL_TCP_HEADER_BYTES, p, n) == 0);
        free(out);
        sources_free(&s);
    }

    /* The TCP decoders on the raw input, framing unchecked by a scanner. */
    decode_avl_tcp(p, n);
    decode_gprs(p, n);

    uint64_t imei;
    rc = avl_imei_parse(p, n < AVL_IMEI_DIGITS_MAX + 2 ? n : AVL_IMEI_DIGITS_MAX + 2, &imei);
    CHECK(rc <= 0);
    CHECK_NAMED(rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t ctl = data[0];
    size_t n = size - 1;
    uint8_t *p = heap_copy(data + 1, n);
    uint32_t small = 15u + 8u * (ctl & 0x3Fu);

    static const enum avl_scan_mode modes[] = {AVL_SCAN_HANDSHAKE, AVL_SCAN_DATA, AVL_SCAN_ANY};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        scan_stream(p, n, modes[m], small, ctl);
        scan_stream(p, n, modes[m], 0, ctl);
    }
    decode_whole(p, n);
    free(p);
    return 0;
}
