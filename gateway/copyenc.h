/* copyenc.h — the COPY BINARY encoder for telemetry.positions rows, in three IO layouts.
 *
 * Pure: no I/O, no allocation, no mutable global state; callable from any thread at once. The
 * shard that decodes a packet encodes its records here, straight into its row ring, and the
 * PostgreSQL sink sends the bytes as they are between copyenc_header() and copyenc_trailer().
 *
 * Format: PostgreSQL's binary COPY (docs: "COPY", section "Binary Format"), one tuple per
 * record with the columns of copyenc_columns(layout) in that order:
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
 *   the IO columns, by layout:
 *     COPYENC_ARRAYS (the default, schema/postgres/006_io_arrays.sql):
 *       io_ids integer[]   ids of the fixed-width elements (1, 2, 4, 8 bytes), wire order
 *       io_vals bigint[]   their values, zero-extended; an 8-byte value at or above 2^63 is
 *                          stored as its 64-bit pattern (negative; telemetry.io_u64 reads it)
 *       nx_ids integer[]   ids of the 8E variable-length (NX) elements, wire order
 *       nx_vals bytea[]    their bytes as sent
 *       Empty arrays (never NULL) when a record has no such element. A repeated id is kept
 *       twice, in wire order.
 *     COPYENC_JSONB (the layout before 006; `--io-layout jsonb`):
 *       io jsonb           version byte 1 + {"<id>":<value>,...}: the IO elements in wire
 *                          order, ids as decimal string keys, fixed-width values as unsigned
 *                          decimals, NX values as lowercase hex strings. A record that repeats
 *                          an id gives an object with a repeated key; jsonb keeps the last.
 *     COPYENC_RAW (bench/rowvariants only; no gateway writes it):
 *       io_raw bytea       the record's IO groups as sent (from N1 to the end of its last
 *                          group; read with the codec column)
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

/* How a row holds its IO elements (see the top of this file). */
enum copyenc_layout {
    COPYENC_ARRAYS = 0,
    COPYENC_JSONB = 1,
    COPYENC_RAW = 2,
    COPYENC_LAYOUTS = 3,
};

/* The columns before and after the IO ones, common to every layout. */
#define COPYENC_COLUMNS_HEAD                                                                       \
    "imei, ts, received_at, priority, lon, lat, altitude, angle, satellites, speed, event_id, "
#define COPYENC_COLUMNS_TAIL ", generation, codec"

enum {
    COPYENC_HEADER_BYTES = 19, /* "PGCOPY\n\377\r\n\0", flags int32 0, extension length 0 */
    COPYENC_TRAILER_BYTES = 2, /* int16 -1 */
    /* The most bytes any layout writes for a row of n IO elements in io_bytes wire bytes is at
     * most COPYENC_ROW_BYTES_FIXED_MAX + COPYENC_ROW_BYTES_PER_WIRE_BYTE * io_bytes (every
     * element takes at least 2 wire bytes); batch.c reserves by it. */
    COPYENC_ROW_BYTES_FIXED_MAX = 256,
    COPYENC_ROW_BYTES_PER_WIRE_BYTE = 11,
};

/* "arrays", "jsonb", "raw"; "unknown" outside the enum. Static storage. */
const char *copyenc_layout_name(enum copyenc_layout layout);

/* The layout named s (as copyenc_layout_name spells it), or -1. */
int copyenc_layout_parse(const char *s);

/* The column list of the layout, comma-separated, in row order (static storage), and its
 * length (17 for COPYENC_ARRAYS, 14 for the others). */
const char *copyenc_columns(enum copyenc_layout layout);
int copyenc_columns_len(enum copyenc_layout layout);

/* "COPY telemetry.positions (<columns>) FROM STDIN (FORMAT binary)" for the layout; static
 * storage. */
const char *copyenc_copy_sql(enum copyenc_layout layout);

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

/* An upper bound of the bytes copyenc_row(layout, ...) writes for r, in O(1) from r->io_total
 * and r->io_bytes; never above the COPYENC_ROW_BYTES_* bound. */
size_t copyenc_row_bytes_max(enum copyenc_layout layout, const struct avl_record *r);

/* Encodes one tuple for r (from a successful decode; its packet bytes must still be there) of
 * device imei, received at received_at_us (µs since 1970). Checks the values first, then that
 * cap >= copyenc_row_bytes_max(layout, r), then writes: on any error nothing is written. An angle
 * or speed that smallint cannot hold is written as NULL (copyenc_nulls), not refused. Returns the
 * bytes written (> 0) or an enum copyenc_err. */
int copyenc_row(enum copyenc_layout layout, uint8_t *out, size_t cap, uint64_t imei,
                const struct avl_record *r, int64_t received_at_us);

#ifdef __cplusplus
}
#endif

#endif /* AVLGATE_GATEWAY_COPYENC_H */
