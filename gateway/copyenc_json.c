/* copyenc_json.c — the IO elements of a record as jsonb text, for the COPYENC_JSONB layout.
 *
 * Owns no state; pure, any thread. The text is written from the record's wire bytes
 * directly, with one loop per IO group in which the id and value widths are constants (the
 * generic avl_io_next resolves both per element, and cost a third of the encoder's time); the
 * walk relies on the decoder's check that the groups exactly fill io_bytes and that their
 * counts sum to io_total, and re-asserts only what keeps its reads and writes in bounds, once
 * per group. Numbers become text with few data-dependent branches (devices differ in the order
 * and sizes of their values, so the old digit-count branches mispredicted): an id below 1000
 * or a value of one byte from a table of its text, wider ones as 8 digits at once in a
 * register (dec8_digits) with the leading zeros shifted out. Those stores are 8 bytes wide
 * whatever the text's length; the bytes past the text are scratch that the next writes
 * cover, and a store never ends past the row (see copyenc_io_json), so it stays inside the
 * bound the caller's capacity was checked against. */
#include "gateway/copyenc_io.h"

#include <assert.h>
#include <string.h>

#include "codec/bytes.h"

/* "00" .. "ff": the two lowercase hex digits of each byte. */
static const char hex2[513] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                              "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
                              "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
                              "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
                              "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
                              "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
                              "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
                              "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

/* The text of n < 1000: DEC3_LEN its digit count, DEC3_TEXT its digits as a little-endian
 * integer (first digit in the lowest byte, so first in memory). */
#define DEC3_LEN(n) ((n) < 10 ? 1u : (n) < 100 ? 2u : 3u)
#define DEC3_TEXT(n)                                                                               \
    ((n) < 10    ? (uint64_t)('0' + (n))                                                           \
     : (n) < 100 ? ((uint64_t)('0' + (n) / 10) | (uint64_t)('0' + (n) % 10) << 8)                  \
                 : ((uint64_t)('0' + (n) / 100) | (uint64_t)('0' + (n) / 10 % 10) << 8 |           \
                    (uint64_t)('0' + (n) % 10) << 16))
/* A table entry holds up to 7 text bytes and, in the top byte, how many of them count. */
#define TEXT_LEN(e) ((unsigned)((e) >> 56))
/* `"<n>":` (ids below 1000: all of codec 8's, nearly all in practice) and `<n>,` (values of
 * width 1). */
#define KEY3(n)                                                                                    \
    ((uint64_t)'"' | DEC3_TEXT(n) << 8 | (uint64_t)'"' << (8 * (DEC3_LEN(n) + 1)) |                \
     (uint64_t)':' << (8 * (DEC3_LEN(n) + 2)) | (uint64_t)(DEC3_LEN(n) + 3) << 56)
#define VALUE3(n)                                                                                  \
    (DEC3_TEXT(n) | (uint64_t)',' << (8 * DEC3_LEN(n)) | (uint64_t)(DEC3_LEN(n) + 1) << 56)
#define X4(M, n)   M(n), M((n) + 1), M((n) + 2), M((n) + 3)
#define X16(M, n)  X4(M, n), X4(M, (n) + 4), X4(M, (n) + 8), X4(M, (n) + 12)
#define X64(M, n)  X16(M, n), X16(M, (n) + 16), X16(M, (n) + 32), X16(M, (n) + 48)
#define X256(M, n) X64(M, n), X64(M, (n) + 64), X64(M, (n) + 128), X64(M, (n) + 192)
#define X1000(M)                                                                                   \
    X256(M, 0), X256(M, 256), X256(M, 512), X64(M, 768), X64(M, 832), X64(M, 896), X16(M, 960),    \
        X16(M, 976), X4(M, 992), X4(M, 996)

enum { KEY3_IDS = 1000 };
static const uint64_t key3[KEY3_IDS] = {X1000(KEY3)};
static const uint64_t value3[256] = {X256(VALUE3, 0)};

#define ASCII_ZEROS UINT64_C(0x3030303030303030)

static inline void store8(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/* The 8 decimal digits of v < 10^8, leading zeros included, as byte values 0..9 with the first
 * digit in the lowest byte. Each round splits every lane of the register in two (4-digit
 * lanes, then 2, then 1), dividing by a multiply and a shift that are exact for the lane's
 * range: x / 100 == x * 10486 >> 20 for x < 10^4, x / 10 == x * 103 >> 10 for x < 100. No
 * product reaches the next lane. */
static inline uint64_t dec8_digits(uint32_t v)
{
    uint64_t x = (uint64_t)(v / 10000u) | (uint64_t)(v % 10000u) << 32;
    uint64_t q = (x * 10486u >> 20) & UINT64_C(0x0000007F0000007F);
    x = q | (x - q * 100u) << 16;
    q = (x * 103u >> 10) & UINT64_C(0x000F000F000F000F);
    return q | (x - q * 10u) << 8;
}

/* The decimal digit count of v < 10^8 (1 for 0). From compares, not from the digits, so that
 * the write cursor, which every following store waits for, does not wait for the digit
 * arithmetic too. */
static inline unsigned dec8_len(uint32_t v)
{
    return 1u + (v >= 10u) + (v >= 100u) + (v >= 1000u) + (v >= 10000u) + (v >= 100000u) +
           (v >= 1000000u) + (v >= 10000000u);
}

/* The len = dec8_len(v) digits of v < 10^8 as text in the low bytes. */
static inline uint64_t dec8_text(uint32_t v, unsigned len)
{
    return (dec8_digits(v) + ASCII_ZEROS) >> (8u * (8u - len));
}

/* Writes v < 10^8 in decimal (an 8-byte store); returns the end of the digits. */
static inline uint8_t *put_dec8(uint8_t *p, uint32_t v)
{
    unsigned len = dec8_len(v);
    store8(p, dec8_text(v, len));
    return p + len;
}

/* Writes v >= 10^8 (ICCIDs, MACs, large odometers) in decimal: 8-digit groups, the lower
 * ones with their zeros kept; returns the end of the digits. Out of line, so that the twelve
 * inlined group loops stay small. */
static __attribute__((noinline)) uint8_t *put_dec_long(uint8_t *p, uint64_t v)
{
    uint64_t hi = v / 100000000u;
    uint32_t lo = (uint32_t)(v % 100000000u);
    if (hi < UINT64_C(100000000)) {
        p = put_dec8(p, (uint32_t)hi);
    } else { /* hi < 1.9e11 */
        p = put_dec8(p, (uint32_t)(hi / 100000000u));
        store8(p, dec8_digits((uint32_t)(hi % 100000000u)) + ASCII_ZEROS);
        p += 8;
    }
    store8(p, dec8_digits(lo) + ASCII_ZEROS);
    return p + 8;
}

/* Writes any v in decimal; returns the end of the digits. */
static inline uint8_t *put_dec(uint8_t *p, uint64_t v)
{
    if (v < UINT64_C(100000000))
        return put_dec8(p, (uint32_t)v);
    return put_dec_long(p, v);
}

/* `"<id>":` for an id < 2^16 (at most 8 bytes: one store); returns its end. */
static inline uint8_t *put_key(uint8_t *p, uint32_t id)
{
    if (id < KEY3_IDS) {
        uint64_t key = key3[id];
        store8(p, key);
        return p + TEXT_LEN(key);
    }
    unsigned len = 4u + (id >= 10000u);
    uint64_t digits = dec8_text(id, len);
    store8(p, (uint64_t)'"' | digits << 8 | (uint64_t)('"' | ':' << 8) << (8u * (len + 1u)));
    return p + len + 3u;
}

/* One fixed-width group of codec layout (count_bytes, id_bytes) at *c: its elements as
 * `"<id>":<value>,`, *c moved past the group and *elems_left lowered by its count. The
 * constants make each call site a loop of its own, without per-element width branches. */
static inline __attribute__((always_inline)) uint8_t *
put_group(uint8_t *p, const uint8_t **c, const uint8_t *end, uint32_t *elems_left,
          unsigned count_bytes, unsigned id_bytes, unsigned width)
{
    const uint8_t *q = *c;
    assert((size_t)(end - q) >= count_bytes);
    uint32_t n = count_bytes == 1 ? q[0] : be16(q);
    q += count_bytes;
    /* The decoder checked both; they keep the reads inside the record's IO bytes and the
     * element count (4 bytes of punctuation each) inside copyenc_row_bytes_max. */
    assert((size_t)(end - q) >= (size_t)n * (id_bytes + width));
    assert(n <= *elems_left);
    *elems_left -= n;
    for (uint32_t i = 0; i < n; i++) {
        p = put_key(p, id_bytes == 1 ? q[0] : be16(q));
        q += id_bytes;
        switch (width) {
        case 1: {
            uint64_t value = value3[q[0]];
            store8(p, value);
            p += TEXT_LEN(value);
            break;
        }
        case 2:
            p = put_dec8(p, be16(q));
            *p++ = ',';
            break;
        case 4:
            p = put_dec(p, be32(q));
            *p++ = ',';
            break;
        default:
            p = put_dec(p, be64(q));
            *p++ = ',';
            break;
        }
        q += width;
    }
    *c = q;
    return p;
}

/* The four fixed-width groups, N1 N2 N4 N8, of one codec layout. */
static inline __attribute__((always_inline)) uint8_t *
put_groups(uint8_t *p, const uint8_t **c, const uint8_t *end, uint32_t *elems_left,
           unsigned count_bytes, unsigned id_bytes)
{
    p = put_group(p, c, end, elems_left, count_bytes, id_bytes, 1);
    p = put_group(p, c, end, elems_left, count_bytes, id_bytes, 2);
    p = put_group(p, c, end, elems_left, count_bytes, id_bytes, 4);
    return put_group(p, c, end, elems_left, count_bytes, id_bytes, 8);
}

/* The 8E NX group: u16 count, then u16 id, u16 length and the value bytes, as `"<id>":"<hex>",`.
 * Few per record and of any length, so checked per element. */
static uint8_t *put_nx_group(uint8_t *p, const uint8_t **c, const uint8_t *end,
                             uint32_t *elems_left)
{
    const uint8_t *q = *c;
    assert(end - q >= 2);
    uint32_t n = be16(q);
    q += 2;
    assert(n <= *elems_left);
    *elems_left -= n;
    for (uint32_t i = 0; i < n; i++) {
        assert(end - q >= 4);
        p = put_key(p, be16(q));
        uint32_t len = be16(q + 2);
        q += 4;
        assert((size_t)(end - q) >= len);
        *p++ = '"';
        for (uint32_t k = 0; k < len; k++) {
            memcpy(p, hex2 + q[k] * 2u, 2);
            p += 2;
        }
        q += len;
        p[0] = '"';
        p[1] = ',';
        p += 2;
    }
    *c = q;
    return p;
}

/* Why the 8-byte stores stay in the row: a store starts at a key (`"<id>":`, 4 bytes at
 * least) or a value (1 byte at least) and is followed in the row by at least the rest of that
 * element, its ',' (or the closing '}') and the row's last two fields (10 bytes at least). */
uint8_t *copyenc_io_json(uint8_t *p, const struct avl_record *r)
{
    const uint8_t *c = r->io;
    const uint8_t *end = r->io + r->io_bytes;
    uint32_t elems_left = r->io_total;

    *p++ = '{';
    uint8_t *first = p;
    switch (r->codec) {
    case AVL_CODEC_8:
        p = put_groups(p, &c, end, &elems_left, 1, 1);
        break;
    case AVL_CODEC_8E:
        p = put_groups(p, &c, end, &elems_left, 2, 2);
        p = put_nx_group(p, &c, end, &elems_left);
        break;
    default:
        assert(r->codec == AVL_CODEC_16);
        p = put_groups(p, &c, end, &elems_left, 1, 2);
        break;
    }
    assert(c == end && elems_left == 0);
    if (p != first)
        p[-1] = '}'; /* over the last ',' */
    else
        *p++ = '}';
    return p;
}
