/* copyenc.c — COPY BINARY tuples for telemetry.positions (see copyenc.h for the layout).
 *
 * Owns no state: every function is pure and may run on any shard thread at once. This is the
 * hot path of ingest (one call per stored record), so it neither allocates nor formats with
 * stdio: the size is bounded first (copyenc_row_bytes_max) so the writes need no per-byte
 * checks, integers are written two digits at a time from a table, and the only variable-length
 * part, the jsonb length, is patched in after the text is written. */
#include "gateway/copyenc.h"

#include <assert.h>
#include <string.h>

/* timestamptz is µs since 2000-01-01; this is that instant in µs since 1970. */
#define PG_EPOCH_UNIX_US INT64_C(946684800000000)
/* MIN_TIMESTAMP (4714-11-24 BC) in µs since 1970; src/include/datatype/timestamp.h. END is
 * past INT64_MAX in unix µs, so an int64 received_at is never too late. */
#define PG_TIMESTAMP_MIN_UNIX_US (INT64_C(-211813488000000000) + PG_EPOCH_UNIX_US)
#define SMALLINT_MAX             32767u

_Static_assert(COPYENC_ROW_FIXED_BYTES == 117, "row layout changed: update the bound and tests");

static const char dec2[201] = "0001020304050607080910111213141516171819"
                              "2021222324252627282930313233343536373839"
                              "4041424344454647484950515253545556575859"
                              "6061626364656667686970717273747576777879"
                              "8081828384858687888990919293949596979899";

/* "00" .. "ff": the two lowercase hex digits of each byte. */
static const char hex2[513] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                              "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
                              "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
                              "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
                              "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
                              "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
                              "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
                              "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

static inline uint8_t *put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return p + 2;
}

static inline uint8_t *put_be32(uint8_t *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
    return p + 4;
}

static inline uint8_t *put_be64(uint8_t *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
    return p + 8;
}

/* Field length, then value. */
static inline uint8_t *put_int2(uint8_t *p, uint16_t v)
{
    return put_be16(put_be32(p, 2), v);
}

static inline uint8_t *put_int4(uint8_t *p, uint32_t v)
{
    return put_be32(put_be32(p, 4), v);
}

static inline uint8_t *put_int8(uint8_t *p, uint64_t v)
{
    return put_be64(put_be32(p, 8), v);
}

static inline uint8_t *put_float8(uint8_t *p, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return put_int8(p, bits);
}

/* Exactly 4 digits of v < 10^4. */
static inline void put_dec4(uint8_t *p, uint32_t v)
{
    memcpy(p, dec2 + (v / 100u) * 2u, 2);
    memcpy(p + 2, dec2 + (v % 100u) * 2u, 2);
}

/* Exactly 8 digits of v < 10^8: two independent halves, so the divisions do not chain. */
static inline void put_dec8(uint8_t *p, uint32_t v)
{
    put_dec4(p, v / 10000u);
    put_dec4(p + 4, v % 10000u);
}

/* v < 10^4 without leading zeros; returns the end. */
static inline uint8_t *put_dec_lt4(uint8_t *p, uint32_t v)
{
    if (v < 10u) {
        p[0] = (uint8_t)('0' + v);
        return p + 1;
    }
    if (v < 100u) {
        memcpy(p, dec2 + v * 2u, 2);
        return p + 2;
    }
    if (v < 1000u) {
        p[0] = (uint8_t)('0' + v / 100u);
        memcpy(p + 1, dec2 + (v % 100u) * 2u, 2);
        return p + 3;
    }
    put_dec4(p, v);
    return p + 4;
}

/* v < 10^8 without leading zeros. */
static inline uint8_t *put_dec_lt8(uint8_t *p, uint32_t v)
{
    if (v < 10000u)
        return put_dec_lt4(p, v);
    p = put_dec_lt4(p, v / 10000u);
    put_dec4(p, v % 10000u);
    return p + 4;
}

/* Writes v in decimal at p, without leading zeros; returns the end. Most IO values are flags
 * and small counters and most ids have 2 or 3 digits, so the short cases come first; a long
 * value (ICCID, odometer) is cut into 8-digit groups whose digit pairs come from a table with
 * 32-bit arithmetic, instead of one chain of 64-bit divisions per two digits. */
static inline uint8_t *put_dec(uint8_t *p, uint64_t v)
{
    if (v < UINT64_C(100000000))
        return put_dec_lt8(p, (uint32_t)v);
    if (v < UINT64_C(10000000000000000)) {
        p = put_dec_lt8(p, (uint32_t)(v / 100000000u));
        put_dec8(p, (uint32_t)(v % 100000000u));
        return p + 8;
    }
    uint64_t hi = v / 100000000u; /* < 1.9e11 */
    p = put_dec_lt4(p, (uint32_t)(hi / 100000000u));
    put_dec8(p, (uint32_t)(hi % 100000000u));
    put_dec8(p + 8, (uint32_t)(v % 100000000u));
    return p + 16;
}

/* The io object's text at p; returns its end. p has room for 2 + 4 * io_total + 3 * io_bytes
 * (see copyenc_row_bytes_max for why that suffices). */
static uint8_t *put_io_json(uint8_t *p, const struct avl_record *r)
{
    struct avl_io_iter it;
    struct avl_io io;
    uint32_t elems = 0;

    *p++ = '{';
    avl_io_iter_init(&it, r);
    while (avl_io_next(&it, &io)) {
        /* The bound holds only for the element count the decoder checked. */
        elems++;
        assert(elems <= r->io_total);
        *p++ = '"';
        p = put_dec(p, io.id);
        p[0] = '"';
        p[1] = ':';
        p += 2;
        if (!io.nx) {
            p = put_dec(p, io.value);
        } else {
            *p++ = '"';
            for (uint32_t i = 0; i < io.len; i++) {
                memcpy(p, hex2 + io.bytes[i] * 2u, 2);
                p += 2;
            }
            *p++ = '"';
        }
        *p++ = ',';
    }
    if (p[-1] == ',')
        p[-1] = '}';
    else
        *p++ = '}';
    (void)elems;
    return p;
}

const char *copyenc_strerror(int err)
{
    if (err >= 0)
        return "ok";
    switch ((enum copyenc_err)err) {
    case COPYENC_E_NO_SPACE:
        return "no_space";
    case COPYENC_E_IMEI_RANGE:
        return "imei_range";
    case COPYENC_E_TS_RANGE:
        return "ts_range";
    case COPYENC_E_RECEIVED_RANGE:
        return "received_range";
    case COPYENC_E_ANGLE_RANGE:
        return "angle_range";
    case COPYENC_E_SPEED_RANGE:
        return "speed_range";
    }
    return "unknown_error";
}

int copyenc_header(uint8_t out[COPYENC_HEADER_BYTES])
{
    static const uint8_t header[COPYENC_HEADER_BYTES] = {
        'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xFF, '\r', '\n', 0, /* signature */
        0,   0,   0,   0,                                        /* flags: no OIDs */
        0,   0,   0,   0,                                        /* header extension length */
    };
    memcpy(out, header, sizeof header);
    return COPYENC_HEADER_BYTES;
}

int copyenc_trailer(uint8_t out[COPYENC_TRAILER_BYTES])
{
    out[0] = 0xFF;
    out[1] = 0xFF;
    return COPYENC_TRAILER_BYTES;
}

/* Why 2 + 4 * io_total + 3 * io_bytes bounds the io text: "{}" or "{" ... "}" costs 2, and
 * each element `"<id>":<value>,` costs 4 punctuation bytes plus its id and value text, which
 * are at most 3 bytes per wire byte they came from (io_bytes counts every one of them): an id
 * of 1 byte has at most 3 digits, of 2 bytes at most 5 (< 6); a value of width 1, 2, 4, 8 has
 * at most 3, 5, 10, 20 digits (< 3 * width); an NX value of L bytes with its u16 length is
 * 2 + 2L text bytes (< 3 * (2 + L)). The group counts in io_bytes only add slack. */
size_t copyenc_row_bytes_max(const struct avl_record *r)
{
    return (size_t)COPYENC_ROW_FIXED_BYTES + 2u + 4u * (size_t)r->io_total +
           3u * (size_t)r->io_bytes;
}

int copyenc_row(uint8_t *out, size_t cap, uint64_t imei, const struct avl_record *r,
                int64_t received_at_us)
{
    if (imei > (uint64_t)INT64_MAX)
        return COPYENC_E_IMEI_RANGE;
    if (r->ts_ms >= AVL_TS_MS_END)
        return COPYENC_E_TS_RANGE;
    if (received_at_us < PG_TIMESTAMP_MIN_UNIX_US)
        return COPYENC_E_RECEIVED_RANGE;
    if (r->angle_deg > SMALLINT_MAX)
        return COPYENC_E_ANGLE_RANGE;
    if (r->speed_kmh > SMALLINT_MAX)
        return COPYENC_E_SPEED_RANGE;
    if (cap < copyenc_row_bytes_max(r))
        return COPYENC_E_NO_SPACE;

    uint8_t *p = out;
    p = put_be16(p, COPYENC_COLUMNS_LEN);
    p = put_int8(p, imei);
    /* ts_ms * 1000 < 2^64 and the difference fits int64 (AVL_TS_MS_END); unsigned arithmetic
     * gives the two's complement of the negative values (before 2000) directly. */
    p = put_int8(p, r->ts_ms * 1000u - (uint64_t)PG_EPOCH_UNIX_US);
    p = put_int8(p, (uint64_t)received_at_us - (uint64_t)PG_EPOCH_UNIX_US);
    p = put_int2(p, r->priority);
    p = put_float8(p, (double)r->lon_e7 / 1e7);
    p = put_float8(p, (double)r->lat_e7 / 1e7);
    p = put_int2(p, (uint16_t)r->altitude_m);
    p = put_int2(p, r->angle_deg);
    p = put_int2(p, r->satellites);
    p = put_int2(p, r->speed_kmh);
    p = put_int4(p, r->event_id);

    uint8_t *io_len = p;
    p += 4;
    *p++ = 1; /* jsonb binary format version */
    p = put_io_json(p, r);
    put_be32(io_len, (uint32_t)(p - io_len - 4));

    if (r->codec == AVL_CODEC_16)
        p = put_int2(p, r->generation);
    else
        p = put_be32(p, UINT32_MAX); /* -1: NULL */
    p = put_int2(p, r->codec);

    assert((size_t)(p - out) <= copyenc_row_bytes_max(r));
    return (int)(p - out);
}
