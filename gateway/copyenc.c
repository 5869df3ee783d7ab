/* copyenc.c — COPY BINARY tuples for telemetry.positions (see copyenc.h for the layouts): the
 * row's frame, its fixed-width columns and the choice of IO writer.
 *
 * Owns no state: every function is pure and may run on any shard thread at once. This is the
 * hot path of ingest (one call per stored record), so it neither allocates nor formats with
 * stdio. The size is bounded first (copyenc_row_bytes_max), so the writes need no per-byte
 * checks; variable-length fields get their length patched in after their bytes. The IO
 * columns are written by copyenc_json.c (jsonb text) and copyenc_arrays.c (the four arrays);
 * the raw layout is a copy of the wire bytes, here. */
#include "gateway/copyenc.h"

#include <assert.h>
#include <string.h>

#include "codec/bytes.h"
#include "gateway/copyenc_io.h"

/* timestamptz is µs since 2000-01-01; this is that instant in µs since 1970. */
#define PG_EPOCH_UNIX_US INT64_C(946684800000000)
/* MIN_TIMESTAMP (4714-11-24 BC) in µs since 1970; src/include/datatype/timestamp.h. END is
 * past INT64_MAX in unix µs, so an int64 received_at is never too late. */
#define PG_TIMESTAMP_MIN_UNIX_US (INT64_C(-211813488000000000) + PG_EPOCH_UNIX_US)

enum {
    /* Field count, the 11 head and 2 tail columns with their length words. */
    ROW_COMMON_BYTES = 2 + 13 * 4 + 8 + 8 + 8 + 2 + 8 + 8 + 2 + 2 + 2 + 2 + 4 + 2 + 2,
};
_Static_assert(ROW_COMMON_BYTES == 112, "row layout changed: update the bound and tests");

#define COLUMNS_ARRAYS COPYENC_COLUMNS_HEAD "io_ids, io_vals, nx_ids, nx_vals" COPYENC_COLUMNS_TAIL
#define COLUMNS_JSONB  COPYENC_COLUMNS_HEAD "io" COPYENC_COLUMNS_TAIL
#define COLUMNS_RAW    COPYENC_COLUMNS_HEAD "io_raw" COPYENC_COLUMNS_TAIL
#define COPY_SQL(cols) "COPY telemetry.positions (" cols ") FROM STDIN (FORMAT binary)"

static const struct {
    const char *name, *columns, *copy_sql;
    int columns_len;
} layouts[COPYENC_LAYOUTS] = {
    [COPYENC_ARRAYS] = {"arrays", COLUMNS_ARRAYS, COPY_SQL(COLUMNS_ARRAYS), 17},
    [COPYENC_JSONB] = {"jsonb", COLUMNS_JSONB, COPY_SQL(COLUMNS_JSONB), 14},
    [COPYENC_RAW] = {"raw", COLUMNS_RAW, COPY_SQL(COLUMNS_RAW), 14},
};

const char *copyenc_layout_name(enum copyenc_layout layout)
{
    return (unsigned)layout < COPYENC_LAYOUTS ? layouts[layout].name : "unknown";
}

int copyenc_layout_parse(const char *s)
{
    for (int i = 0; i < COPYENC_LAYOUTS; i++)
        if (strcmp(s, layouts[i].name) == 0)
            return i;
    return -1;
}

const char *copyenc_columns(enum copyenc_layout layout)
{
    assert((unsigned)layout < COPYENC_LAYOUTS);
    return layouts[layout].columns;
}

int copyenc_columns_len(enum copyenc_layout layout)
{
    assert((unsigned)layout < COPYENC_LAYOUTS);
    return layouts[layout].columns_len;
}

const char *copyenc_copy_sql(enum copyenc_layout layout)
{
    assert((unsigned)layout < COPYENC_LAYOUTS);
    return layouts[layout].copy_sql;
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

/* The IO columns' bound per layout:
 * - jsonb: 4 (length) + 1 (version) + 2 + 4 * io_total + 3 * io_bytes. "{}" or "{" ... "}"
 *   costs 2, and each element `"<id>":<value>,` costs 4 punctuation bytes plus its id and
 *   value text, which are at most 3 bytes per wire byte they came from (io_bytes counts every
 *   one of them): an id of 1 byte has at most 3 digits, of 2 bytes at most 5 (< 6); a value of
 *   width 1, 2, 4, 8 has at most 3, 5, 10, 20 digits (< 3 * width); an NX value of L bytes
 *   with its u16 length is 2 + 2L text bytes (< 3 * (2 + L)). The group counts in io_bytes
 *   only add slack.
 * - arrays: copyenc_io_arrays_bytes_max.
 * - raw: 4 + io_bytes.
 * Every element takes at least 2 wire bytes (an id and a value of one byte each), so
 * io_total <= io_bytes / 2 and each is within COPYENC_ROW_BYTES_* (the assert below). */
size_t copyenc_row_bytes_max(enum copyenc_layout layout, const struct avl_record *r)
{
    size_t io;
    switch (layout) {
    case COPYENC_JSONB:
        io = 4u + 1u + 2u + 4u * (size_t)r->io_total + 3u * (size_t)r->io_bytes;
        break;
    case COPYENC_RAW:
        io = 4u + (size_t)r->io_bytes;
        break;
    default:
        assert(layout == COPYENC_ARRAYS);
        io = copyenc_io_arrays_bytes_max(r);
        break;
    }
    size_t n = ROW_COMMON_BYTES + io;
    assert(n <= COPYENC_ROW_BYTES_FIXED_MAX +
                    (size_t)COPYENC_ROW_BYTES_PER_WIRE_BYTE * (size_t)r->io_bytes);
    return n;
}

/* The IO columns of the layout at p; returns their end. */
static uint8_t *put_io(uint8_t *p, enum copyenc_layout layout, const struct avl_record *r)
{
    uint8_t *len = p;
    switch (layout) {
    case COPYENC_ARRAYS:
        return copyenc_io_arrays(p, r);
    case COPYENC_JSONB:
        p += 4;
        *p++ = 1; /* jsonb binary format version */
        p = copyenc_io_json(p, r);
        break;
    default:
        assert(layout == COPYENC_RAW);
        p += 4;
        if (r->io_bytes)
            memcpy(p, r->io, r->io_bytes);
        p += r->io_bytes;
        break;
    }
    out_be32(len, (uint32_t)(p - len - 4));
    return p;
}

int copyenc_row(enum copyenc_layout layout, uint8_t *out, size_t cap, uint64_t imei,
                const struct avl_record *r, int64_t received_at_us)
{
    assert((unsigned)layout < COPYENC_LAYOUTS);
    if (imei > (uint64_t)INT64_MAX)
        return COPYENC_E_IMEI_RANGE;
    if (r->ts_ms >= AVL_TS_MS_END)
        return COPYENC_E_TS_RANGE;
    if (received_at_us < PG_TIMESTAMP_MIN_UNIX_US)
        return COPYENC_E_RECEIVED_RANGE;
    if (cap < copyenc_row_bytes_max(layout, r))
        return COPYENC_E_NO_SPACE;

    uint8_t *p = out;
    p = out_be16(p, (uint16_t)layouts[layout].columns_len);
    p = put_int8(p, imei);
    /* ts_ms * 1000 < 2^64 and the difference fits int64 (AVL_TS_MS_END); unsigned arithmetic
     * gives the two's complement of the negative values (before 2000) directly. */
    p = put_int8(p, r->ts_ms * 1000u - (uint64_t)PG_EPOCH_UNIX_US);
    p = put_int8(p, (uint64_t)received_at_us - (uint64_t)PG_EPOCH_UNIX_US);
    p = put_int2(p, r->priority);
    p = put_float8(p, (double)r->lon_e7 / 1e7);
    p = put_float8(p, (double)r->lat_e7 / 1e7);
    p = put_int2(p, (uint16_t)r->altitude_m);
    unsigned nulls = copyenc_nulls(r); /* smallint cannot hold them: NULL, never wrapped */
    p = nulls & COPYENC_NULL_ANGLE ? put_null(p) : put_int2(p, r->angle_deg);
    p = put_int2(p, r->satellites);
    p = nulls & COPYENC_NULL_SPEED ? put_null(p) : put_int2(p, r->speed_kmh);
    p = put_int4(p, r->event_id);
    p = put_io(p, layout, r);
    if (r->codec == AVL_CODEC_16)
        p = put_int2(p, r->generation);
    else
        p = put_null(p);
    p = put_int2(p, r->codec);

    assert((size_t)(p - out) <= copyenc_row_bytes_max(layout, r));
    return (int)(p - out);
}
