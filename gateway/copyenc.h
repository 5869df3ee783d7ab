/* copyenc.h — the COPY BINARY encoder for telemetry.positions rows.
 *
 * Pure: no I/O, no allocation, no mutable global state; callable from any thread at once. The
 * shard that decodes a packet encodes its records here, straight into its row ring, and the
 * PostgreSQL sink sends the bytes as they are between copyenc_header() and copyenc_trailer().
 *
 * Format: PostgreSQL's binary COPY (docs: "COPY", section "Binary Format"), one tuple per
 * record with the columns of COPYENC_COLUMNS in that order:
 *
 *   imei bigint            the canonical IMEI
 *   ts timestamptz         r->ts_ms, as µs since 2000-01-01
 *   received_at timestamptz
 *   priority smallint
 *   lon, lat float8        lon_e7 / 1e7, lat_e7 / 1e7 (the correctly rounded double)
 *   altitude smallint      signed, as sent
 *   angle, speed smallint  u16 on the wire: above 32767 (which smallint cannot hold) the field
 *                          is NULL, never wrapped; the rest of the record is stored as sent
 *                          (copyenc_nulls says which fields)
 *   satellites smallint
 *   event_id integer
 *   io jsonb               version byte 1 + {"<id>":<value>,...}: the IO elements in wire
 *                          order, ids as decimal string keys, fixed-width values as unsigned
 *                          decimals, NX values as lowercase hex strings. A record that repeats
 *                          an id gives an object with a repeated key; jsonb keeps the last.
 *   generation smallint    Codec 16 only; NULL for 8 and 8E
 *   codec smallint         the codec byte: 8, 142 or 16
 */
#ifndef AVLGATE_GATEWAY_COPYENC_H
#define AVLGATE_GATEWAY_COPYENC_H

#include <stddef.h>
#include <stdint.h>

#include "codec/avl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The column list the rows are encoded for, and the statement that loads them. */
#define COPYENC_COLUMNS                                                                            \
    "imei, ts, received_at, priority, lon, lat, altitude, angle, satellites, speed, event_id, "    \
    "io, generation, codec"
#define COPYENC_COPY_SQL "COPY telemetry.positions (" COPYENC_COLUMNS ") FROM STDIN (FORMAT binary)"

enum {
    COPYENC_COLUMNS_LEN = 14,
    COPYENC_HEADER_BYTES = 19, /* "PGCOPY\n\377\r\n\0", flags int32 0, extension length 0 */
    COPYENC_TRAILER_BYTES = 2, /* int16 -1 */
    /* A row without its io text: field count, 14 lengths, fixed-width values, jsonb version. */
    COPYENC_ROW_FIXED_BYTES =
        2 + COPYENC_COLUMNS_LEN * 4 + 8 + 8 + 8 + 2 + 8 + 8 + 2 + 2 + 2 + 2 + 4 + 1 + 2 + 2,
};

/* Errors: negative, named by copyenc_strerror(). A range error is a property of the record
 * (reject its packet with that reason); COPYENC_E_NO_SPACE is the caller's buffer. */
enum copyenc_err {
    COPYENC_E_NO_SPACE = -1,       /* cap < copyenc_row_bytes_max(r); nothing written */
    COPYENC_E_IMEI_RANGE = -2,     /* imei above INT64_MAX */
    COPYENC_E_TS_RANGE = -3,       /* ts_ms at or past AVL_TS_MS_END */
    COPYENC_E_RECEIVED_RANGE = -4, /* received_at_us outside timestamptz */
    COPYENC_E_ERR_MIN = -4,
};

/* The fields copyenc_row writes as NULL because their column cannot hold the wire value. */
enum copyenc_null {
    COPYENC_NULL_ANGLE = 1 << 0, /* angle above 32767 */
    COPYENC_NULL_SPEED = 1 << 1, /* speed above 32767 */
};

/* Which of r's fields copyenc_row stores as NULL: a mask of enum copyenc_null, 0 for a record
 * stored as sent. */
static inline unsigned copyenc_nulls(const struct avl_record *r)
{
    return (r->angle_deg > INT16_MAX ? (unsigned)COPYENC_NULL_ANGLE : 0u) |
           (r->speed_kmh > INT16_MAX ? (unsigned)COPYENC_NULL_SPEED : 0u);
}

/* The error's name ("no_space", "ts_range", ...); "ok" for values >= 0, "unknown_error"
 * outside the enum. Static storage. */
const char *copyenc_strerror(int err);

/* Writes the 19-byte file header. Returns COPYENC_HEADER_BYTES. */
int copyenc_header(uint8_t out[COPYENC_HEADER_BYTES]);

/* Writes the 2-byte file trailer. Returns COPYENC_TRAILER_BYTES. */
int copyenc_trailer(uint8_t out[COPYENC_TRAILER_BYTES]);

/* An upper bound of the bytes copyenc_row() writes for r, in O(1) from r->io_total and
 * r->io_bytes: COPYENC_ROW_FIXED_BYTES + 2 + 4 * io_total + 3 * io_bytes. */
size_t copyenc_row_bytes_max(const struct avl_record *r);

/* Encodes one tuple for r (from a successful decode; its packet bytes must still be there) of
 * device imei, received at received_at_us (µs since 1970). Checks the values first, then that
 * cap >= copyenc_row_bytes_max(r), then writes: on any error nothing is written. An angle or
 * speed that smallint cannot hold is written as NULL (copyenc_nulls), not refused. Returns the
 * bytes written (> 0) or an enum copyenc_err. */
int copyenc_row(uint8_t *out, size_t cap, uint64_t imei, const struct avl_record *r,
                int64_t received_at_us);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_COPYENC_H */
